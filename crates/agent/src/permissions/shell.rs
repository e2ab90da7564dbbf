//! A bash command line read statically: every simple command in it, wherever it is nested
//! (chains, pipes, substitutions, subshells, `sh -c` strings, wrappers such as `sudo`), and
//! whether it is more than one plain command. What cannot be read is said, never guessed.

/// One simple command of a shell line, as the shell would run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SimpleCommand {
    /// Unquoted words, keywords and leading assignments included.
    raw: Vec<String>,
    /// The same without leading keywords (`if`, `do`, `!`, `{` …) and assignments.
    words: Vec<String>,
    /// The command word contains an expansion or substitution: which program runs is unknown.
    dynamic: bool,
}

/// A bash command line read statically: every simple command in it, wherever it is nested.
#[derive(Debug, Default)]
pub(super) struct ShellLine {
    commands: Vec<SimpleCommand>,
    /// Chaining, piping, background jobs, substitutions, subshells, here-documents or
    /// redirections to files: anything that makes this more than one plain command.
    compound: bool,
    /// Unbalanced quotes or brackets, or nesting too deep: the reading may miss commands.
    incomplete: bool,
}

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "case", "esac",
    "in", "!", "{", "}", "function", "select", "coproc", "time", "[[", "]]",
];

/// Programs that run their arguments as a command.
const WRAPPERS: &[&str] = &[
    "sudo", "doas", "env", "nohup", "nice", "ionice", "timeout", "time", "command", "exec",
    "builtin", "xargs", "stdbuf", "setsid", "chrt", "taskset", "unbuffer", "watch", "strace",
    "ltrace", "nsenter", "chroot", "runuser", "su", "flock", "parallel",
    // `find … -exec rm {} ;` runs its arguments too.
    "find",
];

/// Shells and builtins that run a string as a command line.
const EVALUATORS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "busybox", "eval", "su", "sudo",
    "runuser",
];

impl ShellLine {
    pub(super) fn parse(src: &str) -> ShellLine {
        let mut line = ShellLine::default();
        let chars: Vec<char> = src.chars().collect();
        let mut pos = 0;
        parse_list(&chars, &mut pos, None, &mut line, 0);
        // Strings given to `sh -c` or `eval` are command lines too.
        let mut i = 0;
        while i < line.commands.len() {
            let words = line.commands[i].words.clone();
            if let Some(first) = words.first()
                && EVALUATORS.contains(&basename(first))
                && words.len() > 1
            {
                let mut nested = Vec::new();
                for w in &words[1..] {
                    if w.contains(|c: char| c.is_whitespace() || ";&|`$()".contains(c)) {
                        nested.push(w.clone());
                    }
                }
                nested.push(words[1..].join(" "));
                for n in nested {
                    if i > 64 || line.commands.len() > 512 {
                        line.incomplete = true;
                        break;
                    }
                    let chars: Vec<char> = n.chars().collect();
                    let mut pos = 0;
                    let mut inner = ShellLine::default();
                    parse_list(&chars, &mut pos, None, &mut inner, 1);
                    line.incomplete |= inner.incomplete;
                    line.commands.extend(inner.commands);
                }
            }
            i += 1;
        }
        line
    }

    pub(super) fn unreadable(&self) -> Option<&'static str> {
        if self.incomplete {
            Some("unbalanced quotes or brackets")
        } else if self.commands.iter().any(|c| c.dynamic) {
            Some("the command name comes from a variable, substitution or expansion")
        } else {
            None
        }
    }

    /// The one plain command this line is, as text an allow rule is matched against.
    pub(super) fn plain(&self) -> Option<String> {
        match self.commands.as_slice() {
            [c] if !self.compound && !self.incomplete && !c.dynamic && c.raw == c.words => {
                Some(c.words.join(" "))
            }
            _ => None,
        }
    }

    /// Every text a deny rule is matched against: each simple command, with the program's
    /// basename, and every tail after a wrapper word (`sudo -u x rm …` yields `rm …`).
    pub(super) fn deny_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.commands {
            for start in 0..c.words.len() {
                if start > 0 && !WRAPPERS.contains(&basename(&c.words[0])) {
                    break;
                }
                let tail = &c.words[start..];
                if tail.is_empty() {
                    continue;
                }
                out.push(tail.join(" "));
                let base = basename(&tail[0]);
                if base != tail[0] {
                    let mut w = tail.to_vec();
                    w[0] = base.to_owned();
                    out.push(w.join(" "));
                }
            }
        }
        out
    }
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// A word being read: its unquoted text, and whether an expansion went into it.
#[derive(Default)]
struct Word {
    text: String,
    started: bool,
    dynamic: bool,
    /// Unquoted glob or brace-expansion characters: the shell may turn it into other words
    /// (`/bin/r?` is `/bin/rm`, `{rm,x}` is `rm x`).
    expands: bool,
}

/// The simple command being read.
#[derive(Default)]
struct Current {
    raw: Vec<String>,
    /// Per word of `raw`: whether an expansion went into it.
    dynamic: Vec<bool>,
    /// Per word of `raw`: whether the shell may expand it into other words.
    expands: Vec<bool>,
    /// The next finished word is a redirection target, not an argument.
    redirect: Option<String>,
}

impl Current {
    fn push_word(&mut self, w: &mut Word, line: &mut ShellLine) {
        if !w.started {
            return;
        }
        let word = std::mem::take(w);
        if let Some(op) = self.redirect.take() {
            let o = op.trim_start_matches(|c: char| c.is_ascii_digit());
            // Duplicating descriptors, discarding output and reading input write no file.
            let harmless = (o.ends_with('&')
                && (word.text == "-" || word.text.chars().all(|c| c.is_ascii_digit())))
                || (o.starts_with('>') && word.text == "/dev/null")
                || o == "<";
            if !harmless || word.dynamic {
                line.compound = true;
            }
            return;
        }
        self.raw.push(word.text);
        self.dynamic.push(word.dynamic);
        self.expands.push(word.expands);
    }

    fn finish(&mut self, line: &mut ShellLine) {
        let cur = std::mem::take(self);
        if cur.redirect.is_some() {
            // An operator with no target: a syntax error the shell would refuse.
            line.incomplete = true;
        }
        if cur.raw.is_empty() {
            return;
        }
        let skip = cur
            .raw
            .iter()
            .take_while(|w| KEYWORDS.contains(&w.as_str()) || is_assignment(w))
            .count();
        let words = cur.raw[skip..].to_vec();
        let Some(first) = words.first() else { return };
        // Which program runs is unknown when its name is computed, or when a wrapper's
        // arguments (its command) are.
        let program = basename(first);
        let runs_arguments = WRAPPERS.contains(&program) || EVALUATORS.contains(&program);
        let unknown = |i: usize| cur.dynamic[i] || cur.expands[i];
        let dynamic = unknown(skip) || (runs_arguments && (skip..cur.raw.len()).any(unknown));
        line.commands.push(SimpleCommand {
            raw: cur.raw,
            words,
            dynamic,
        });
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

const MAX_DEPTH: usize = 16;

/// Reads commands until `close` (or the end), collecting them into `line`.
fn parse_list(
    s: &[char],
    pos: &mut usize,
    close: Option<char>,
    line: &mut ShellLine,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        line.incomplete = true;
        *pos = s.len();
        return;
    }
    let mut cur = Current::default();
    let mut w = Word::default();
    while *pos < s.len() {
        let c = s[*pos];
        match c {
            _ if Some(c) == close => {
                *pos += 1;
                cur.push_word(&mut w, line);
                cur.finish(line);
                return;
            }
            ' ' | '\t' | '\r' => {
                cur.push_word(&mut w, line);
                *pos += 1;
            }
            '\n' | ';' | '&' | '|' => {
                if c == '&' && s.get(*pos + 1) == Some(&'>') {
                    // `&>file`: both streams to a file.
                    cur.push_word(&mut w, line);
                    *pos += 2;
                    if s.get(*pos) == Some(&'>') {
                        *pos += 1;
                    }
                    cur.redirect = Some(">".into());
                    continue;
                }
                cur.push_word(&mut w, line);
                cur.finish(line);
                if !(c == '\n'
                    && close.is_none()
                    && s[*pos + 1..].iter().all(|c| c.is_whitespace()))
                {
                    line.compound = true;
                }
                *pos += 1;
            }
            '#' if !w.started => {
                while *pos < s.len() && s[*pos] != '\n' {
                    *pos += 1;
                }
            }
            '\'' => {
                w.started = true;
                *pos += 1;
                loop {
                    match s.get(*pos) {
                        None => {
                            line.incomplete = true;
                            break;
                        }
                        Some('\'') => {
                            *pos += 1;
                            break;
                        }
                        Some(&ch) => {
                            w.text.push(ch);
                            *pos += 1;
                        }
                    }
                }
            }
            '"' => {
                w.started = true;
                *pos += 1;
                loop {
                    match s.get(*pos) {
                        None => {
                            line.incomplete = true;
                            break;
                        }
                        Some('"') => {
                            *pos += 1;
                            break;
                        }
                        Some('\\') => {
                            match s.get(*pos + 1) {
                                Some(&n @ ('$' | '`' | '"' | '\\')) => w.text.push(n),
                                Some('\n') => {}
                                Some(&n) => {
                                    w.text.push('\\');
                                    w.text.push(n);
                                }
                                None => line.incomplete = true,
                            }
                            *pos += 2;
                        }
                        Some('$') | Some('`') => dollar_or_backtick(s, pos, &mut w, line, depth),
                        Some(&ch) => {
                            w.text.push(ch);
                            *pos += 1;
                        }
                    }
                }
            }
            '\\' => {
                match s.get(*pos + 1) {
                    Some('\n') => {}
                    Some(&n) => {
                        w.started = true;
                        w.text.push(n);
                    }
                    None => line.incomplete = true,
                }
                *pos += 2;
            }
            '$' | '`' => {
                w.started = true;
                dollar_or_backtick(s, pos, &mut w, line, depth);
            }
            '(' => {
                if w.started
                    || (!cur.raw.is_empty()
                        && !cur.raw.iter().all(|r| KEYWORDS.contains(&r.as_str())))
                {
                    // `f() { … }` or `a(b`: nothing a plain command contains.
                    line.incomplete = true;
                }
                cur.push_word(&mut w, line);
                cur.finish(line);
                line.compound = true;
                *pos += 1;
                parse_list(s, pos, Some(')'), line, depth + 1);
            }
            ')' => {
                // A `)` nobody opened (a `case` pattern, or a syntax error).
                line.incomplete = true;
                *pos += 1;
            }
            '<' | '>' => {
                // `2>`: the digits were a descriptor, not a word.
                let fd = if w.started && !w.dynamic && w.text.chars().all(|c| c.is_ascii_digit()) {
                    std::mem::take(&mut w).text
                } else {
                    cur.push_word(&mut w, line);
                    String::new()
                };
                let mut op = format!("{fd}{c}");
                *pos += 1;
                if s.get(*pos) == Some(&'(') {
                    // Process substitution.
                    line.compound = true;
                    *pos += 1;
                    parse_list(s, pos, Some(')'), line, depth + 1);
                    w.started = true;
                    w.dynamic = true;
                    continue;
                }
                while let Some(&n @ ('<' | '>' | '&' | '|')) = s.get(*pos) {
                    op.push(n);
                    *pos += 1;
                }
                if op.contains("<<") {
                    // A here-document: its body follows on later lines, which are read as
                    // commands too (a deny rule then sees more, never less).
                    line.compound = true;
                }
                cur.redirect = Some(op);
            }
            _ => {
                w.started = true;
                if matches!(c, '*' | '?' | '[') || (c == '{' && brace_expansion(&s[*pos..])) {
                    w.expands = true;
                }
                w.text.push(c);
                *pos += 1;
            }
        }
    }
    if close.is_some() {
        line.incomplete = true;
    }
    cur.push_word(&mut w, line);
    cur.finish(line);
}

/// Whether the `{` starting `s` opens a brace expansion (`{a,b}`, `{1..3}`) in this word.
fn brace_expansion(s: &[char]) -> bool {
    let word: String = s
        .iter()
        .take_while(|c| !c.is_whitespace() && !";&|<>()\"'`".contains(**c))
        .collect();
    match word.find('}') {
        Some(end) => word[..end].contains(',') || word[..end].contains(".."),
        None => false,
    }
}

/// `$(…)`, `$((…))`, `${…}`, `$name` or `` `…` `` at `pos`: substitutions are read as nested
/// command lines; every expansion makes the word dynamic.
fn dollar_or_backtick(
    s: &[char],
    pos: &mut usize,
    w: &mut Word,
    line: &mut ShellLine,
    depth: usize,
) {
    if s[*pos] == '`' {
        *pos += 1;
        let mut inner = String::new();
        loop {
            match s.get(*pos) {
                None => {
                    line.incomplete = true;
                    break;
                }
                Some('`') => {
                    *pos += 1;
                    break;
                }
                Some('\\') if matches!(s.get(*pos + 1), Some('`' | '\\' | '$')) => {
                    inner.push(s[*pos + 1]);
                    *pos += 2;
                }
                Some(&ch) => {
                    inner.push(ch);
                    *pos += 1;
                }
            }
        }
        let chars: Vec<char> = inner.chars().collect();
        let mut p = 0;
        parse_list(&chars, &mut p, None, line, depth + 1);
        line.compound = true;
        w.dynamic = true;
        w.text.push('`');
        return;
    }
    // s[pos] == '$'
    match s.get(*pos + 1) {
        Some('(') => {
            *pos += 2;
            line.compound = true;
            // `$((…))` is arithmetic, but reading it as commands only ever finds more.
            parse_list(s, pos, Some(')'), line, depth + 1);
            w.dynamic = true;
            w.text.push('$');
        }
        Some('{') => {
            *pos += 2;
            let mut nest = 1;
            while let Some(&ch) = s.get(*pos) {
                *pos += 1;
                match ch {
                    '{' => nest += 1,
                    '}' => {
                        nest -= 1;
                        if nest == 0 {
                            break;
                        }
                    }
                    '$' | '`' if s.get(*pos) == Some(&'(') || ch == '`' => {
                        // A substitution inside `${…:-$(…)}`.
                        line.compound = true;
                        *pos -= 1;
                        let mut scratch = Word::default();
                        dollar_or_backtick(s, pos, &mut scratch, line, depth + 1);
                    }
                    _ => {}
                }
            }
            if nest != 0 {
                line.incomplete = true;
            }
            w.dynamic = true;
            w.text.push('$');
        }
        Some(&n) if n.is_ascii_alphanumeric() || "_?@*#!$-".contains(n) => {
            *pos += 2;
            if n.is_ascii_alphabetic() || n == '_' {
                while s
                    .get(*pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    *pos += 1;
                }
            }
            w.dynamic = true;
            w.text.push('$');
        }
        Some('\'') => {
            // $'…' (ANSI-C quoting): the escapes could spell anything.
            *pos += 1;
            w.dynamic = true;
            w.text.push('$');
        }
        _ => {
            w.text.push('$');
            *pos += 1;
        }
    }
}
