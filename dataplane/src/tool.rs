//! The one runner of the command-line tools kproxy drives (`iptables-*-restore`,
//! `iptables-*-save`, `nft`, `ip`, `ipset`): spawn with the input on stdin, collect the
//! output, and turn a failure into a [`ToolError`] that names the command, its exit status,
//! its stderr and the input lines around the line the tool complained about.
//!
//! Every mode's apply layer goes through [`Tool::run`] (tokio) or [`Tool::run_blocking`]
//! (IPVS mode, whose syncs run on a blocking thread); nothing else spawns a process.

use std::io;
use std::process::{ExitStatus, Output, Stdio};

use thiserror::Error;

/// A failure to run a tool, or the tool's own failure.
#[derive(Debug, Error)]
pub enum ToolError {
    /// The binary is not installed.
    #[error("{binary} not found: install Debian's `{package}` package")]
    Missing {
        /// The binary.
        binary: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The binary could not be run, or its pipes failed.
    #[error("could not run {binary}: {source}")]
    Exec {
        /// The binary.
        binary: String,
        /// Why.
        source: io::Error,
    },
    /// The tool ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}{context}")]
    Failed {
        /// The binary and its arguments.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
        /// The input lines around the line it complained about (empty if none).
        context: String,
    },
}

impl ToolError {
    /// The exit code of a tool that ran and failed (`None` for every other error).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ToolError::Failed { status, .. } => status.code(),
            _ => None,
        }
    }

    /// The stderr of a tool that ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ToolError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Finds the 1-based input line a tool's stderr blames (e.g. `iptables-restore: line 12
/// failed`, `/dev/stdin:12:5-10: Error: …`).
pub type FailingLine = fn(&str) -> Option<usize>;

/// One installed tool: its binary, the package that ships it, and how to read the failing
/// input line out of its errors.
#[derive(Debug, Clone, Copy)]
pub struct Tool<'a> {
    /// The binary (looked up on `PATH`).
    pub binary: &'a str,
    /// The Debian package that ships it, named when it is missing.
    pub package: &'static str,
    /// Reads the input line a failure blames, for the error's context.
    pub failing_line: Option<FailingLine>,
}

impl<'a> Tool<'a> {
    /// `binary` of `package`, whose errors blame no input line.
    pub const fn new(binary: &'a str, package: &'static str) -> Self {
        Tool {
            binary,
            package,
            failing_line: None,
        }
    }

    /// The same tool, whose errors blame input lines as `failing_line` reads them.
    pub const fn blaming(self, failing_line: FailingLine) -> Self {
        Tool {
            failing_line: Some(failing_line),
            ..self
        }
    }

    /// Runs the tool with `args`, `stdin` written to it (stdin is `/dev/null` without), and
    /// returns its stdout. The process is killed if the future is dropped.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ToolError> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(self.binary)
            .args(args)
            .stdin(stdin_mode(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|e| self.exec_error(e))?;
            // Dropping the pipe closes the tool's stdin.
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| self.exec_error(e))?;
        self.finish(args, stdin, output)
    }

    /// [`Tool::run`] for a blocking thread.
    pub fn run_blocking(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ToolError> {
        use std::io::Write;
        let mut child = std::process::Command::new(self.binary)
            .args(args)
            .stdin(stdin_mode(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| self.exec_error(e))?;
        }
        let output = child.wait_with_output().map_err(|e| self.exec_error(e))?;
        self.finish(args, stdin, output)
    }

    fn spawn_error(&self, source: io::Error) -> ToolError {
        if source.kind() == io::ErrorKind::NotFound {
            ToolError::Missing {
                binary: self.binary.to_owned(),
                package: self.package,
            }
        } else {
            self.exec_error(source)
        }
    }

    fn exec_error(&self, source: io::Error) -> ToolError {
        ToolError::Exec {
            binary: self.binary.to_owned(),
            source,
        }
    }

    fn finish(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        output: Output,
    ) -> Result<String, ToolError> {
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let context = match (stdin, self.failing_line) {
            (Some(input), Some(find)) => find(&stderr)
                .map(|n| input_context(input, n))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let mut command = self.binary.to_owned();
        for arg in args {
            command.push(' ');
            command.push_str(arg);
        }
        Err(ToolError::Failed {
            command,
            status: output.status,
            stderr,
            context,
        })
    }
}

fn stdin_mode(stdin: Option<&str>) -> Stdio {
    if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

/// The input lines `n-2..=n+2` (1-based), each numbered, the failing one marked `>`.
fn input_context(input: &str, n: usize) -> String {
    let mut out = format!("\n  input around line {n}:");
    for (i, line) in input.lines().enumerate().skip(n.saturating_sub(3)).take(5) {
        let marker = if i + 1 == n { ">" } else { " " };
        out.push_str(&format!("\n  {marker}{:>7}: {line}", i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blames the line number after `line `.
    fn blame(stderr: &str) -> Option<usize> {
        stderr.split_once("line ")?.1.trim().parse().ok()
    }

    #[test]
    fn input_context_marks_the_failing_line() {
        let ctx = input_context("a\nb\nc\nd\ne\nf\n", 4);
        assert!(ctx.contains(">      4: d"), "{ctx}");
        assert!(ctx.contains("       2: b"), "{ctx}");
        assert!(ctx.contains("       6: f"), "{ctx}");
        assert!(!ctx.contains(": a"), "{ctx}");
    }

    #[tokio::test]
    async fn output_and_failures_name_the_command() {
        let sh = Tool::new("sh", "dash").blaming(blame);
        let out = sh.run(&["-c", "cat"], Some("hello\n")).await;
        assert_eq!(out.ok().as_deref(), Some("hello\n"));
        let err = sh
            .run(
                &["-c", "cat >/dev/null; echo line 2 >&2; exit 3"],
                Some("x\ny\nz\n"),
            )
            .await
            .expect_err("exit 3 fails");
        assert_eq!(err.exit_code(), Some(3));
        assert_eq!(err.stderr(), Some("line 2"));
        let text = err.to_string();
        assert!(text.starts_with("`sh -c cat"), "{text}");
        assert!(text.contains(">      2: y"), "{text}");
    }

    #[test]
    fn blocking_runs_alike_and_a_missing_binary_names_its_package() {
        let sh = Tool::new("sh", "dash");
        assert_eq!(
            sh.run_blocking(&["-c", "echo hi"], None).ok().as_deref(),
            Some("hi\n")
        );
        let err = sh
            .run_blocking(&["-c", "exit 1"], None)
            .expect_err("exit 1 fails");
        assert_eq!(err.exit_code(), Some(1));
        let missing = Tool::new("kproxy-no-such-tool", "nothing")
            .run_blocking(&[], None)
            .expect_err("not installed");
        assert!(matches!(missing, ToolError::Missing { .. }), "{missing}");
        assert!(missing.to_string().contains("`nothing`"), "{missing}");
    }
}
