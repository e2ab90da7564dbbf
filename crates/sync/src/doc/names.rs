//! Document names: stable ids, never local paths. `session/<id>`, `ws/<workspace>/index`,
//! `ws/<workspace>/file/<file id>`, where every id is 1..=64 characters of `[A-Za-z0-9_-]`.

use std::fmt;

use super::DocError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DocName {
    Session(String),
    WorkspaceIndex(String),
    WorkspaceFile { workspace: String, file: String },
}

/// Whether `id` is a valid id segment.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn id(s: &str, name: &str) -> Result<String, DocError> {
    if valid_id(s) {
        Ok(s.to_owned())
    } else {
        Err(DocError::InvalidName(
            name.to_owned(),
            "ids are 1 to 64 characters of letters, digits, '_' and '-'",
        ))
    }
}

impl DocName {
    pub fn parse(name: &str) -> Result<Self, DocError> {
        let parts: Vec<&str> = name.split('/').collect();
        match parts.as_slice() {
            ["session", s] => Ok(DocName::Session(id(s, name)?)),
            ["ws", w, "index"] => Ok(DocName::WorkspaceIndex(id(w, name)?)),
            ["ws", w, "file", f] => Ok(DocName::WorkspaceFile {
                workspace: id(w, name)?,
                file: id(f, name)?,
            }),
            _ => Err(DocError::InvalidName(
                name.to_owned(),
                "expected session/<id>, ws/<id>/index or ws/<id>/file/<id>",
            )),
        }
    }

    pub fn session(id_: &str) -> Result<Self, DocError> {
        Ok(DocName::Session(id(id_, id_)?))
    }

    pub fn workspace_index(workspace: &str) -> Result<Self, DocError> {
        Ok(DocName::WorkspaceIndex(id(workspace, workspace)?))
    }

    pub fn workspace_file(workspace: &str, file: &str) -> Result<Self, DocError> {
        Ok(DocName::WorkspaceFile {
            workspace: id(workspace, workspace)?,
            file: id(file, file)?,
        })
    }

    /// The workspace a document belongs to, for access checks.
    pub fn workspace(&self) -> Option<&str> {
        match self {
            DocName::Session(_) => None,
            DocName::WorkspaceIndex(w) | DocName::WorkspaceFile { workspace: w, .. } => Some(w),
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        match self {
            DocName::Session(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocName::Session(s) => write!(f, "session/{s}"),
            DocName::WorkspaceIndex(w) => write!(f, "ws/{w}/index"),
            DocName::WorkspaceFile { workspace, file } => write!(f, "ws/{workspace}/file/{file}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_hostile_names_fail() {
        for ok in ["session/abc-1", "ws/w_1/index", "ws/w/file/F-9"] {
            assert_eq!(DocName::parse(ok).unwrap().to_string(), ok);
        }
        let long = format!("session/{}", "a".repeat(65));
        for bad in [
            "",
            "session/",
            "session/a/b",
            "session/..",
            "session/a b",
            "ws/w/file/../x",
            "ws//index",
            "/session/a",
            "session/a\0",
            "ws/w/other",
            long.as_str(),
        ] {
            assert!(DocName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let f = DocName::parse("ws/w/file/f").unwrap();
        assert_eq!(f.workspace(), Some("w"));
        assert_eq!(DocName::parse("session/s").unwrap().session_id(), Some("s"));
    }
}
