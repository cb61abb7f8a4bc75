//! A bound on bracket nesting in policy source, checked before regorus
//! parses it.
//!
//! regorus 0.14's parser tries each `[` and `{` first as a comprehension and,
//! when that is not one, parses the same text again as an array, set or
//! object, so its time doubles with every level of nesting (measured in
//! release builds: 9 ms at 8 levels, 42 ms at 10, 600 ms at 14). 42 levels of
//! `[` kept it busy for longer than a fuzzer would wait, holding the reload
//! lock. Policies written by people nest a handful of levels; refusing deep
//! nesting up front turns that hang into a clear error with file and line.
//! Parentheses cost nothing extra and are not counted.

/// Deepest nesting of `[` and `{` accepted in one policy file.
pub const MAX_NESTING: usize = 10;

/// Where the source first nests deeper than [`MAX_NESTING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub line: usize,
    pub column: usize,
}

/// Scans Rego source the way its lexer does for `[` and `{`: outside `#`
/// comments, `"…"` strings (with `\` escapes) and `` `…` `` raw strings.
/// Unbalanced or unterminated text is left for the parser to report.
pub fn check(source: &str) -> Result<(), TooDeep> {
    #[derive(Clone, Copy)]
    enum State {
        Code,
        Comment,
        String { escaped: bool },
        RawString,
    }
    let mut state = State::Code;
    let mut depth = 0usize;
    let mut line = 1;
    let mut column = 0;
    for c in source.chars() {
        if c == '\n' {
            line += 1;
            column = 0;
        } else {
            column += 1;
        }
        state = match (state, c) {
            (State::Code, '#') => State::Comment,
            (State::Code, '"') => State::String { escaped: false },
            (State::Code, '`') => State::RawString,
            (State::Code, '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(TooDeep { line, column });
                }
                State::Code
            }
            (State::Code, ']' | '}') => {
                depth = depth.saturating_sub(1);
                State::Code
            }
            (State::Comment, '\n') => State::Code,
            (State::String { escaped: false }, '"') => State::Code,
            (State::String { escaped: false }, '\\') => State::String { escaped: true },
            (State::String { .. }, '\n') => State::Code,
            (State::String { .. }, _) => State::String { escaped: false },
            (State::RawString, '`') => State::Code,
            (other, _) => other,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!(
            "package p\n\nx := {}1{}\n",
            open.repeat(depth),
            close.repeat(depth)
        )
    }

    #[test]
    fn accepts_nesting_up_to_the_limit() {
        assert_eq!(check(&nested("[", "]", MAX_NESTING)), Ok(()));
        assert_eq!(check(&nested("{", "}", MAX_NESTING)), Ok(()));
    }

    #[test]
    fn refuses_one_level_more_with_its_position() {
        let source = nested("[", "]", MAX_NESTING + 1);
        assert_eq!(
            check(&source),
            Err(TooDeep {
                line: 3,
                column: 5 + MAX_NESTING + 1
            })
        );
        assert!(check(&nested("[{", "}]", MAX_NESTING / 2 + 1)).is_err());
        assert_eq!(check(&nested("(", ")", 4 * MAX_NESTING)), Ok(()));
    }

    #[test]
    fn brackets_in_comments_and_strings_do_not_count() {
        let deep = "[".repeat(MAX_NESTING + 1);
        for source in [
            format!("package p\n# {deep}\nx := 1\n"),
            format!("package p\nx := \"{deep}\"\n"),
            format!("package p\nx := \"\\\"{deep}\"\n"),
            format!("package p\nx := `{deep}`\n"),
        ] {
            assert_eq!(check(&source), Ok(()), "{source}");
        }
    }

    #[test]
    fn closing_brackets_bring_the_depth_back_down() {
        let level = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        let source = format!("package p\nx := [{level}, {level}, {level}]\n");
        assert!(check(&source).is_err(), "the outer [ adds one level");
        let source = format!("package p\nx := {level}\ny := {level}\n");
        assert_eq!(check(&source), Ok(()));
    }
}
