//! What the live kernel holds for one service port, object by object, next to what the
//! plan wants: the kernel's side of `kproxy explain --live`. Each mode's inspector (in its
//! own module) reads the kernel; this is the plain data they return.

use std::fmt;

/// Whether the kernel has an object the plan wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// The kernel has it as the plan wants it.
    Present,
    /// The plan wants it; the kernel does not have it.
    Missing,
    /// The kernel has it with another value (the kernel's).
    Differs(String),
    /// The kernel has it; the plan does not want it.
    Unexpected,
}

/// One kernel object carrying the decision (a rule, a map element, a virtual server...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveObject {
    /// The object, as the mode's tools spell it.
    pub object: String,
    /// What the kernel has of it.
    pub presence: Presence,
}

impl LiveObject {
    /// An object the plan wants, with what the kernel has of it.
    pub fn new(object: impl Into<String>, presence: Presence) -> Self {
        LiveObject {
            object: object.into(),
            presence,
        }
    }

    /// The kernel disagrees with the plan about it.
    pub fn disagrees(&self) -> bool {
        self.presence != Presence::Present
    }
}

impl fmt::Display for LiveObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.presence {
            Presence::Present => write!(f, "ok         {}", self.object),
            Presence::Missing => write!(f, "MISSING    {}", self.object),
            Presence::Differs(kernel) => {
                write!(f, "DIFFERENT  {} (the kernel has: {kernel})", self.object)
            }
            Presence::Unexpected => write!(f, "UNEXPECTED {}", self.object),
        }
    }
}

/// Splits a rule's arguments as a shell would: on spaces, keeping double-quoted text (the
/// comments) together, without the quotes.
pub fn split_args(rule: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in rule.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    args.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        args.push(current);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_like_a_shell_would() {
        assert_eq!(
            split_args(r#"-m comment --comment "ns/web:http cluster IP" -d 10.96.0.10 -j X"#),
            [
                "-m",
                "comment",
                "--comment",
                "ns/web:http cluster IP",
                "-d",
                "10.96.0.10",
                "-j",
                "X"
            ]
        );
        assert_eq!(
            split_args(r#"--comment "" -j Y"#),
            ["--comment", "", "-j", "Y"]
        );
        assert!(split_args("").is_empty());
    }
}
