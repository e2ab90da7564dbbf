//! The HTTP contract, checked in and generated: `crates/wire/openapi.json` is exactly what
//! `jarvis_cloud::api::openapi::document()` makes (from the wire types and the routes' notes),
//! it documents exactly the routes the server registers, and `ui/src/api/types.ts` is exactly
//! what this file generates from it. When one differs, the test says how to regenerate:
//!
//! ```text
//! JARVIS_BLESS=1 cargo test -p jarvis-cloud --test openapi
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

mod common;

const REGENERATE: &str = "JARVIS_BLESS=1 cargo test -p jarvis-cloud --test openapi";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compares `path` with `want`; with `JARVIS_BLESS=1` writes it instead.
fn check_file(path: &Path, want: &str) {
    if std::env::var_os("JARVIS_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()))
            + 1;
        panic!(
            "{} is not what the wire types and routes generate (first difference at line {line}); \
             regenerate it with `{REGENERATE}` and commit the result",
            path.display()
        );
    }
}

#[test]
fn openapi_json_is_generated_from_the_wire_types_and_routes() {
    let text = jarvis_cloud::api::openapi::document_text().unwrap();
    check_file(&root().join("crates/wire/openapi.json"), &text);
}

#[test]
fn every_served_route_is_documented_and_nothing_else() {
    let doc = jarvis_cloud::api::openapi::document().unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    // Not JSON API routes: the hub's socket, blobs and desktop updates are described in prose.
    let prose = ["/sync", "/blobs/", "/updates/"];
    let served: BTreeSet<_> = common::route_table()
        .into_iter()
        .filter(|(_, p)| !prose.iter().any(|x| p.starts_with(x)))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "served but not in crates/cloud-agent/src/api/routes.json: {missing:?}; \
         documented but not served: {stale:?}"
    );
    // Every typed route names a documented operation.
    for t in jarvis_cloud::api::openapi::TYPED {
        assert!(
            doc["paths"][t.path][t.method].is_object(),
            "TYPED names {} {} which routes.json does not document",
            t.method,
            t.path
        );
    }
}

#[test]
fn no_wire_type_is_both_a_request_and_a_response() {
    // Requests are read with defaults (fields may be left out), responses written whole; one
    // schema name cannot say both, so a type is one or the other.
    let (mut requests, mut responses) = (BTreeSet::new(), BTreeSet::new());
    let settings = schemars::generate::SchemaSettings::draft2020_12();
    let mut rg = settings.clone().for_deserialize().into_generator();
    let mut sg = settings.for_serialize().into_generator();
    for t in jarvis_cloud::api::openapi::TYPED {
        if let Some(r) = t.request {
            requests.insert(r(&mut rg).as_value()["$ref"].to_string());
        }
        if let Some((_, r)) = t.response {
            responses.insert(r(&mut sg).as_value()["$ref"].to_string());
        }
    }
    let both: Vec<_> = requests.intersection(&responses).collect();
    assert!(both.is_empty(), "{both:?}");
}

#[test]
fn every_error_code_is_in_the_document() {
    let doc = jarvis_cloud::api::openapi::document().unwrap();
    let text = doc["components"]["schemas"]["ErrorCode"].to_string();
    for code in jarvis_wire::ErrorCode::ALL {
        assert!(
            text.contains(&format!("\"{code}\"")),
            "{code} missing: {text}"
        );
    }
    assert_eq!(
        doc["components"]["responses"]["Error"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

#[test]
fn ui_types_are_generated_from_openapi_json() {
    let doc = jarvis_cloud::api::openapi::document().unwrap();
    check_file(&root().join("ui/src/api/types.ts"), &typescript(&doc));
}

#[test]
fn the_typescript_generator_maps_each_schema_form() {
    let doc: Value = serde_json::from_str(
        r##"{"components": {"schemas": {
            "Code": {"type": "string", "enum": ["a", "b_c"]},
            "Doc": {"oneOf": [{"type": "string", "const": "x"}, {"const": "y"}]},
            "Thing": {"type": "object", "description": "A thing.",
                "properties": {
                    "n": {"type": "integer"}, "s": {"type": ["string", "null"]},
                    "list": {"type": "array", "items": {"$ref": "#/components/schemas/Code"}},
                    "map": {"type": "object", "additionalProperties": {"type": "number"}},
                    "any": {}, "where": {"type": "boolean"}
                },
                "required": ["n", "list", "where"]}
        }}}"##,
    )
    .unwrap();
    let ts = typescript(&doc);
    assert!(ts.contains("export type Code = \"a\" | \"b_c\";"), "{ts}");
    assert!(ts.contains("export type Doc = \"x\" | \"y\";"), "{ts}");
    assert!(
        ts.contains("/** A thing. */\nexport interface Thing {"),
        "{ts}"
    );
    for field in [
        "  n: number;",
        "  s?: string | null;",
        "  list: Code[];",
        "  map?: Record<string, number>;",
        "  any?: unknown;",
        "  where: boolean;",
    ] {
        assert!(ts.contains(field), "{field} in {ts}");
    }
}

/// TypeScript declarations for the document's schemas: one `export` per schema, in name order.
fn typescript(doc: &Value) -> String {
    let mut out = String::from(
        "// Generated from crates/wire/openapi.json by crates/cloud-agent/tests/openapi.rs.\n\
         // Do not edit: change the wire types (crates/wire) and run\n\
         // `JARVIS_BLESS=1 cargo test -p jarvis-cloud --test openapi`.\n",
    );
    let empty = Map::new();
    let schemas = doc["components"]["schemas"].as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = schemas.keys().collect();
    names.sort();
    for name in names {
        let s = &schemas[name];
        out.push('\n');
        if let Some(d) = s["description"].as_str() {
            out.push_str(&format!(
                "/** {} */\n",
                d.replace("*/", "* /").replace('\n', " ")
            ));
        }
        if s.get("properties").is_some() {
            out.push_str(&format!("export interface {name} {}\n", object(s, "")));
        } else {
            out.push_str(&format!("export type {name} = {};\n", ts_type(s, "")));
        }
    }
    out
}

fn object(s: &Value, indent: &str) -> String {
    let required: BTreeSet<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::from("{\n");
    let inner = format!("{indent}  ");
    if let Some(props) = s["properties"].as_object() {
        for (k, v) in props {
            if let Some(d) = v["description"].as_str() {
                out.push_str(&format!(
                    "{inner}/** {} */\n",
                    d.replace("*/", "* /").replace('\n', " ")
                ));
            }
            let opt = if required.contains(k.as_str()) {
                ""
            } else {
                "?"
            };
            out.push_str(&format!("{inner}{k}{opt}: {};\n", ts_type(v, &inner)));
        }
    }
    out.push_str(indent);
    out.push('}');
    out
}

fn ts_type(s: &Value, indent: &str) -> String {
    if let Some(r) = s["$ref"].as_str() {
        return r.rsplit('/').next().unwrap_or("unknown").to_owned();
    }
    if let Some(c) = s.get("const") {
        return c.to_string();
    }
    if let Some(e) = s["enum"].as_array() {
        return union(e.iter().map(Value::to_string));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s[key].as_array() {
            return union(alts.iter().map(|a| ts_type(a, indent)));
        }
    }
    match &s["type"] {
        Value::Array(types) => union(types.iter().map(|t| {
            let mut one = s.clone();
            one["type"] = t.clone();
            ts_type(&one, indent)
        })),
        Value::String(t) => match t.as_str() {
            "string" => "string".into(),
            "integer" | "number" => "number".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "array" => {
                let item = ts_type(&s["items"], indent);
                if item.contains(' ') {
                    format!("({item})[]")
                } else {
                    format!("{item}[]")
                }
            }
            "object" if s.get("properties").is_some() => object(s, indent),
            "object" => match s.get("additionalProperties") {
                Some(v) if v.is_object() => format!("Record<string, {}>", ts_type(v, indent)),
                _ => "Record<string, unknown>".into(),
            },
            _ => "unknown".into(),
        },
        _ => "unknown".into(),
    }
}

fn union(parts: impl Iterator<Item = String>) -> String {
    let mut seen = Vec::new();
    for p in parts {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    if seen.is_empty() {
        "never".into()
    } else {
        seen.join(" | ")
    }
}
