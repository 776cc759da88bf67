//! Hooks: operator commands run around a failover (`[hooks]` in the configuration).
//!
//! primus moves the primary role; everything that points clients at the primary —
//! a virtual IP, a DNS record, a ProxySQL/HAProxy backend, a service registry, a
//! pager — belongs to the operator, and hooks are how the operator moves it. They
//! are the orchestrator hooks, with the same placeholders, so existing scripts keep
//! working:
//!
//! * `pre_failover` runs after the leader has chosen a candidate and before it
//!   touches any instance. A failing (non-zero or timed-out) `pre_failover`
//!   command is a **veto**: the caller aborts the failover, and the remaining
//!   `pre_failover` commands are not run. It is the operator's last word ("not
//!   during the backup window", "not while the proxy layer is down").
//! * `fence` runs while the old primary is being fenced: the place for STONITH, for
//!   withdrawing a VIP from a host that might still answer, for a firewall rule.
//! * `post_failover` / `post_switchover` run after a successful failover or
//!   switchover (move the VIP/DNS/proxy to the new primary, notify);
//!   `post_unsuccessful_failover` after one that was aborted or failed (page
//!   someone). Their failures are logged and change nothing: the topology has
//!   already moved, and every command of the list runs even if an earlier one
//!   failed, so a broken notifier cannot keep a proxy from being repointed.
//!
//! # How a command runs
//!
//! Each command is a template given to `shell -c` (default `/bin/sh`), one after
//! the other in the order configured, with stdin from `/dev/null` and stdout and
//! stderr captured (the first 64 KiB and the last 8 KiB of each) and logged with
//! the cluster, epoch and failover id. Each is bounded by `timeout_ms`: it runs in
//! a process group of its own, and on timeout the whole group is killed with
//! SIGKILL, so a hook's children (`ssh`, `curl`, `sleep`) die with it. A hook that
//! means to leave something running must detach it (`setsid … >/dev/null 2>&1 &`);
//! a background process that keeps the output pipes open is not waited for.
//! Hooks run on the failover path: a slow `pre_failover` delays the promotion by
//! as much as it takes, up to `timeout_ms`, and then vetoes it.
//!
//! # Values: placeholders and environment
//!
//! The values describing the failover reach a command two ways: as orchestrator
//! placeholders in the template (`{failedHost}`, `{successorPort}` …, see
//! [`PLACEHOLDERS`]) and as `PRIMUS_*` environment variables (the same values, see
//! [`HookContext::env`]; `PRIMUS_HOOK` also names the hook being run).
//!
//! Some values come from outside primus — the failure description quotes MySQL's
//! replication errors — so a value must never be able to run a command. primus
//! therefore never pastes a value into the script: each placeholder becomes a
//! quoted *reference* to its environment variable (`{failedHost}` becomes
//! `"${PRIMUS_FAILED_HOST}"`), written for where the placeholder stands — unquoted,
//! inside `'…'` (the quote is closed around the reference) or inside `"…"`. The
//! shell expands a variable's value without parsing it again, so quotes, `;`,
//! `$(…)` or newlines in a value are only characters. Even where the quoting is
//! guessed wrong (a here-document body, an unusual construct) the worst outcome
//! is stray quote characters in the text, never an executed value. What primus
//! cannot protect is a command that parses its arguments as shell *again*:
//! `ssh host "… {failureDescription}"`, `sh -c`, `eval`. Quote for that shell
//! yourself, or pass the value through the environment.
//!
//! Rules of the template syntax: a placeholder is `{name}` with `name` a letter
//! followed by letters, digits or `_`; an unknown name is a configuration error
//! (so a typo is found at start-up, not during a failover). `${name}` is always the
//! shell's own parameter expansion, and `{{name}` is a literal `{name}` (for
//! `awk '{{print}'`). Braces that do not form a `{name}` (`{ cmd; }`, `{a,b}`,
//! `{}`, `{print $1}`) are the shell's. The command text is never logged — it may
//! carry credentials — commands are named by list and position:
//! `pre_failover[0]`.

use primus_types::{ClusterName, FailoverKind, FailoverOutcome, FailoverRecord, NodeId};
use serde::Deserialize;
use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of each output stream kept from its start.
pub const OUTPUT_HEAD_BYTES: usize = 64 * 1024;
/// Bytes of each output stream kept from its end, when it is longer than the head.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;
/// How long output is still read once a command has exited (background processes
/// may keep the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);
/// Lines of stderr quoted in a [`HookError`].
const ERROR_STDERR_LINES: usize = 5;
/// Characters of stderr quoted in a [`HookError`].
const ERROR_STDERR_CHARS: usize = 600;

/// The placeholders a template may use, each with the environment variable holding
/// its value. `failureClusterAlias` is orchestrator's name for the cluster alias;
/// primus clusters have one name, so it is the cluster name.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("failureType", "PRIMUS_FAILURE_TYPE"),
    ("failureDescription", "PRIMUS_FAILURE_DESCRIPTION"),
    ("failureCluster", "PRIMUS_FAILURE_CLUSTER"),
    ("failureClusterAlias", "PRIMUS_FAILURE_CLUSTER"),
    ("failedHost", "PRIMUS_FAILED_HOST"),
    ("failedPort", "PRIMUS_FAILED_PORT"),
    ("successorHost", "PRIMUS_SUCCESSOR_HOST"),
    ("successorPort", "PRIMUS_SUCCESSOR_PORT"),
    ("isSuccessful", "PRIMUS_IS_SUCCESSFUL"),
    ("epoch", "PRIMUS_EPOCH"),
    ("failoverId", "PRIMUS_FAILOVER_ID"),
    ("failoverKind", "PRIMUS_FAILOVER_KIND"),
    ("reason", "PRIMUS_REASON"),
    ("coordinator", "PRIMUS_COORDINATOR"),
];

/// `[hooks]`: command templates per event, the per-command timeout and the shell.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// Run before a failover or switchover touches any instance; a failure vetoes it.
    pub pre_failover: Vec<String>,
    /// Run after a successful automatic or manual failover.
    pub post_failover: Vec<String>,
    /// Run after a failover or switchover that was aborted or failed.
    pub post_unsuccessful_failover: Vec<String>,
    /// Run after a successful switchover.
    pub post_switchover: Vec<String>,
    /// Run while the old primary is fenced (STONITH, VIP withdrawal, firewall).
    pub fence: Vec<String>,
    /// Bound on each command; on expiry its process group is killed.
    pub timeout_ms: u64,
    /// The POSIX shell that runs each command as `shell -c COMMAND`.
    pub shell: String,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            pre_failover: Vec::new(),
            post_failover: Vec::new(),
            post_unsuccessful_failover: Vec::new(),
            post_switchover: Vec::new(),
            fence: Vec::new(),
            timeout_ms: 10_000,
            shell: "/bin/sh".into(),
        }
    }
}

impl HooksSection {
    /// The commands configured for `kind`, in order.
    pub fn commands(&self, kind: HookKind) -> &[String] {
        match kind {
            HookKind::PreFailover => &self.pre_failover,
            HookKind::PostFailover => &self.post_failover,
            HookKind::PostUnsuccessfulFailover => &self.post_unsuccessful_failover,
            HookKind::PostSwitchover => &self.post_switchover,
            HookKind::Fence => &self.fence,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Check the section; the message starts with the full key
    /// (`hooks.pre_failover[0]: unknown placeholder {nope} …`).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_keyed().map_err(|(key, message)| format!("{key}: {message}"))
    }

    /// Like [`validate`](Self::validate), with the key apart from the message, for
    /// `ConfigError::Invalid { key, message }`.
    pub fn validate_keyed(&self) -> Result<(), (String, String)> {
        if self.timeout_ms == 0 {
            return Err(("hooks.timeout_ms".into(), "must be greater than 0".into()));
        }
        let any = HookKind::ALL.iter().any(|k| !self.commands(*k).is_empty());
        if any || self.shell != HooksSection::default().shell {
            check_shell(&self.shell).map_err(|m| ("hooks.shell".to_string(), m))?;
        }
        for kind in HookKind::ALL {
            for (i, template) in self.commands(kind).iter().enumerate() {
                let key = format!("hooks.{kind}[{i}]");
                if template.trim().is_empty() {
                    return Err((key, "must not be empty".into()));
                }
                let script = render(template).map_err(|m| (key.clone(), m))?;
                self.check_syntax(&script).map_err(|m| (key.clone(), m))?;
            }
        }
        Ok(())
    }

    /// `shell -n -c SCRIPT`: a syntax error in a `pre_failover` command would veto
    /// every failover, so it is found when the configuration is read.
    fn check_syntax(&self, script: &str) -> Result<(), String> {
        let out = std::process::Command::new(&self.shell)
            .arg("-n")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {} -n to check the command: {e}", self.shell))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("shell syntax error ({} -n): {}", self.shell, last_lines(&err)))
    }
}

/// The shell must be an executable file: an absolute path, or a name found in PATH.
fn check_shell(shell: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if shell.is_empty() {
        return Err("must not be empty".into());
    }
    if shell.contains('/') {
        let p = Path::new(shell);
        if !p.is_absolute() {
            return Err(format!("{shell:?} must be an absolute path or a command name found in PATH"));
        }
        if !p.exists() {
            return Err(format!("{shell} does not exist"));
        }
        if !executable(p) {
            return Err(format!("{shell} is not an executable file"));
        }
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(shell))) {
        Ok(())
    } else {
        Err(format!("{shell:?} is not found in PATH; give an absolute path"))
    }
}

/// Which hook list to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    PreFailover,
    PostFailover,
    PostUnsuccessfulFailover,
    PostSwitchover,
    Fence,
}

impl HookKind {
    pub const ALL: [HookKind; 5] = [
        HookKind::PreFailover,
        HookKind::PostFailover,
        HookKind::PostUnsuccessfulFailover,
        HookKind::PostSwitchover,
        HookKind::Fence,
    ];

    /// The configuration key of this list (`pre_failover` …).
    pub fn key(self) -> &'static str {
        match self {
            HookKind::PreFailover => "pre_failover",
            HookKind::PostFailover => "post_failover",
            HookKind::PostUnsuccessfulFailover => "post_unsuccessful_failover",
            HookKind::PostSwitchover => "post_switchover",
            HookKind::Fence => "fence",
        }
    }

    /// The hook to run once a failover of `kind` finished with `outcome`.
    pub fn after(kind: FailoverKind, outcome: &FailoverOutcome) -> HookKind {
        match (outcome, kind) {
            (FailoverOutcome::Succeeded, FailoverKind::Switchover) => HookKind::PostSwitchover,
            (FailoverOutcome::Succeeded, _) => HookKind::PostFailover,
            _ => HookKind::PostUnsuccessfulFailover,
        }
    }

    /// A failure stops the list (and, by the caller, the failover) only for
    /// `pre_failover`; every other list runs to its end.
    pub fn stops_at_first_failure(self) -> bool {
        self == HookKind::PreFailover
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// What a hook is told about the failover (see [`PLACEHOLDERS`] and [`HookContext::env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookContext {
    /// The analysis code (`DeadPrimary` …); `{failureType}`.
    pub failure_type: String,
    /// The analysis evidence in words; `{failureDescription}`. May quote MySQL errors.
    pub failure_description: String,
    /// `{failureCluster}`, `{failureClusterAlias}`.
    pub failure_cluster: String,
    /// The old primary; `{failedHost}`, `{failedPort}`.
    pub failed_host: String,
    pub failed_port: u16,
    /// The new primary, once chosen (empty strings otherwise); `{successorHost}`, `{successorPort}`.
    pub successor_host: Option<String>,
    pub successor_port: Option<u16>,
    /// `true` / `false`; `{isSuccessful}`.
    pub is_successful: bool,
    /// The epoch the failover establishes; `{epoch}`.
    pub epoch: u64,
    /// `{failoverId}`.
    pub failover_id: String,
    /// `automatic`, `manual` or `switchover`; `{failoverKind}`.
    pub kind: FailoverKind,
    /// Why the failover was aborted or failed (empty otherwise); `{reason}`.
    pub reason: Option<String>,
    /// The node id of the coordinator running the hook (the Raft leader); `{coordinator}`.
    pub coordinator: NodeId,
}

impl Default for HookContext {
    /// Empty values, an automatic failover, epoch 0.
    fn default() -> Self {
        HookContext {
            failure_type: String::new(),
            failure_description: String::new(),
            failure_cluster: String::new(),
            failed_host: String::new(),
            failed_port: 0,
            successor_host: None,
            successor_port: None,
            is_successful: false,
            epoch: 0,
            failover_id: String::new(),
            kind: FailoverKind::Automatic,
            reason: None,
            coordinator: 0,
        }
    }
}

impl HookContext {
    /// The context of a recorded failover: analysis code and evidence, old primary,
    /// candidate, epoch, and — once finished — whether it succeeded and why not.
    pub fn from_record(cluster: &ClusterName, f: &FailoverRecord, coordinator: NodeId) -> HookContext {
        let (is_successful, reason) = match &f.outcome {
            Some(FailoverOutcome::Succeeded) => (true, None),
            Some(FailoverOutcome::Aborted(r)) => (false, Some(format!("aborted: {r}"))),
            Some(FailoverOutcome::Failed(r)) => (false, Some(format!("failed: {r}"))),
            None => (false, None),
        };
        HookContext {
            failure_type: f.analysis_code.to_string(),
            failure_description: f.evidence.join("; "),
            failure_cluster: cluster.to_string(),
            failed_host: f.old_primary.host().to_string(),
            failed_port: f.old_primary.port(),
            successor_host: Some(f.candidate.host().to_string()),
            successor_port: Some(f.candidate.port()),
            is_successful,
            epoch: f.epoch,
            failover_id: f.id.clone(),
            kind: f.kind,
            reason,
            coordinator,
        }
    }

    /// The environment variables set for every hook command (besides `PRIMUS_HOOK`).
    /// Unknown values are empty strings; NUL bytes, which no environment can hold,
    /// are dropped.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let clean = |s: &str| s.replace('\0', "");
        vec![
            ("PRIMUS_FAILURE_TYPE", clean(&self.failure_type)),
            ("PRIMUS_FAILURE_DESCRIPTION", clean(&self.failure_description)),
            ("PRIMUS_FAILURE_CLUSTER", clean(&self.failure_cluster)),
            ("PRIMUS_FAILED_HOST", clean(&self.failed_host)),
            ("PRIMUS_FAILED_PORT", self.failed_port.to_string()),
            ("PRIMUS_SUCCESSOR_HOST", clean(self.successor_host.as_deref().unwrap_or(""))),
            ("PRIMUS_SUCCESSOR_PORT", self.successor_port.map(|p| p.to_string()).unwrap_or_default()),
            ("PRIMUS_IS_SUCCESSFUL", self.is_successful.to_string()),
            ("PRIMUS_EPOCH", self.epoch.to_string()),
            ("PRIMUS_FAILOVER_ID", clean(&self.failover_id)),
            ("PRIMUS_FAILOVER_KIND", self.kind.to_string()),
            ("PRIMUS_REASON", clean(self.reason.as_deref().unwrap_or(""))),
            ("PRIMUS_COORDINATOR", self.coordinator.to_string()),
        ]
    }
}

/// Where a placeholder stands in the template, as far as a small lexer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Unquoted, at top level.
    Plain,
    /// Inside `'…'`.
    Single,
    /// Inside `"…"`.
    Double,
    /// Inside `` `…` `` (unquoted rules).
    Backtick,
    /// Inside `$(…)` (unquoted rules), with the depth of nested parentheses.
    Subst(u32),
    /// Inside `${…}`.
    Param,
}

/// A `{name}` placeholder at `at`: returns the name and the length in chars.
fn placeholder_at(s: &[char], at: usize) -> Option<(String, usize)> {
    if s.get(at) != Some(&'{') || !s.get(at + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let mut end = at + 1;
    while s.get(end).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_') {
        end += 1;
    }
    if s.get(end) != Some(&'}') {
        return None;
    }
    Some((s[at + 1..end].iter().collect(), end + 1 - at))
}

fn env_var_of(name: &str) -> Option<&'static str> {
    PLACEHOLDERS.iter().find(|(p, _)| *p == name).map(|(_, v)| *v)
}

/// Turn a command template into the script given to the shell: each `{name}`
/// becomes a quoted reference to its `PRIMUS_*` variable, written for its quoting
/// context (see the module documentation). Fails on an unknown placeholder,
/// naming it.
pub fn render(template: &str) -> Result<String, String> {
    let s: Vec<char> = template.chars().collect();
    let mut out = String::with_capacity(template.len() + 64);
    let mut stack = vec![Quoting::Plain];
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let at = *stack.last().unwrap_or(&Quoting::Plain);
        let prev = if i > 0 { Some(s[i - 1]) } else { None };
        // `{{name}`: a literal `{name}`.
        if c == '{' && s.get(i + 1) == Some(&'{') {
            if let Some((name, len)) = placeholder_at(&s, i + 1) {
                out.push('{');
                out.push_str(&name);
                out.push('}');
                i += 1 + len;
                continue;
            }
        }
        if c == '{' && prev != Some('$') {
            if let Some((name, len)) = placeholder_at(&s, i) {
                let var = env_var_of(&name).ok_or_else(|| {
                    let known: Vec<String> = PLACEHOLDERS.iter().map(|(p, _)| format!("{{{p}}}")).collect();
                    format!(
                        "unknown placeholder {{{name}}}; known: {} (write {{{{{name}}} for a literal {{{name}}})",
                        known.join(", ")
                    )
                })?;
                match at {
                    // Close the single quotes, expand in double quotes, reopen.
                    Quoting::Single => out.push_str(&format!("'\"${{{var}}}\"'")),
                    Quoting::Double => out.push_str(&format!("${{{var}}}")),
                    _ => out.push_str(&format!("\"${{{var}}}\"")),
                }
                i += len;
                continue;
            }
        }
        if at == Quoting::Single {
            if c == '\'' {
                stack.pop();
            }
            out.push(c);
            i += 1;
            continue;
        }
        let next = s.get(i + 1).copied();
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = next {
                    out.push(n);
                }
                i += 2;
                continue;
            }
            '$' if next == Some('(') => {
                stack.push(Quoting::Subst(0));
                out.push_str("$(");
                i += 2;
                continue;
            }
            '$' if next == Some('{') => {
                stack.push(Quoting::Param);
                out.push_str("${");
                i += 2;
                continue;
            }
            '`' => {
                if at == Quoting::Backtick {
                    stack.pop();
                } else {
                    stack.push(Quoting::Backtick);
                }
            }
            '"' => {
                if at == Quoting::Double {
                    stack.pop();
                } else {
                    stack.push(Quoting::Double);
                }
            }
            '\'' if at != Quoting::Double => stack.push(Quoting::Single),
            '#' if at != Quoting::Double
                && prev.is_none_or(|p| p.is_whitespace() || matches!(p, ';' | '&' | '|' | '(' | ')')) =>
            {
                // A comment: copied as it is, to the end of the line.
                while i < s.len() && s[i] != '\n' {
                    out.push(s[i]);
                    i += 1;
                }
                continue;
            }
            '(' => {
                if let Some(Quoting::Subst(d)) = stack.last_mut() {
                    *d += 1;
                }
            }
            ')' => {
                if let Some(Quoting::Subst(d)) = stack.last_mut() {
                    if *d == 0 {
                        stack.pop();
                    } else {
                        *d -= 1;
                    }
                }
            }
            '}' if at == Quoting::Param => {
                stack.pop();
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// How a hook command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookStatus {
    /// Exited with this code (0 is success).
    Exited(i32),
    /// Killed by this signal (not by primus).
    Signaled(i32),
    /// Still running at the timeout; its process group was killed.
    TimedOut(Duration),
    /// Never ran: the template did not render, or the shell could not be started.
    NotStarted(String),
}

impl HookStatus {
    pub fn success(&self) -> bool {
        *self == HookStatus::Exited(0)
    }
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookStatus::Exited(0) => f.write_str("succeeded"),
            HookStatus::Exited(c) => write!(f, "exited with status {c}"),
            HookStatus::Signaled(s) => write!(f, "was killed by signal {s}"),
            HookStatus::TimedOut(t) => write!(f, "timed out after {} ms (process group killed)", t.as_millis()),
            HookStatus::NotStarted(why) => write!(f, "did not start: {why}"),
        }
    }
}

/// The result of one hook command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub kind: HookKind,
    /// Position in the `kind` list.
    pub index: usize,
    pub status: HookStatus,
    pub duration: Duration,
    /// Captured output: the first [`OUTPUT_HEAD_BYTES`], and when longer a marker and
    /// the last [`OUTPUT_TAIL_BYTES`] (invalid UTF-8 replaced).
    pub stdout: String,
    pub stderr: String,
    /// Total bytes written to each stream.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

impl HookOutcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// The exit code, if the command exited on its own.
    pub fn exit_code(&self) -> Option<i32> {
        match self.status {
            HookStatus::Exited(c) => Some(c),
            _ => None,
        }
    }
}

/// A hook list had a failing command. For `pre_failover` this is the veto.
#[derive(Debug, Clone)]
pub struct HookError {
    pub kind: HookKind,
    /// Position of the first failing command in the `kind` list.
    pub index: usize,
    pub status: HookStatus,
    /// The last lines of its stderr, on one line (` | ` between lines).
    pub stderr_tail: String,
    /// Every command that ran, in order, the failing ones included.
    pub outcomes: Vec<HookOutcome>,
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hook {}[{}] {}", self.kind, self.index, self.status)?;
        if let Some(o) = self.outcomes.iter().find(|o| o.index == self.index) {
            if !matches!(o.status, HookStatus::NotStarted(_)) {
                write!(f, " after {} ms", o.duration.as_millis())?;
            }
        }
        if self.stderr_tail.is_empty() {
            f.write_str("; no stderr")?;
        } else {
            write!(f, "; stderr: {}", self.stderr_tail)?;
        }
        let more = self.outcomes.iter().filter(|o| !o.success()).count().saturating_sub(1);
        if more > 0 {
            write!(f, "; {more} more {} command(s) failed", self.kind)?;
        }
        Ok(())
    }
}

impl std::error::Error for HookError {}

/// The configured hooks, ready to run.
#[derive(Clone, Default)]
pub struct Hooks {
    section: HooksSection,
    /// Where runs and failures are counted (`primus_hook_*`), when set.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks").field("section", &self.section).finish_non_exhaustive()
    }
}

impl Hooks {
    pub fn new(section: HooksSection) -> Hooks {
        Hooks { section, metrics: None }
    }

    /// Count every command run, and every failure, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Hooks {
        self.metrics = Some(metrics);
        self
    }

    pub fn section(&self) -> &HooksSection {
        &self.section
    }

    /// Whether any command is configured for `kind`.
    pub fn has(&self, kind: HookKind) -> bool {
        !self.section.commands(kind).is_empty()
    }

    /// Run the `kind` commands in order (see the module documentation). `Ok` holds one
    /// outcome per command, all successful; `Err` names the first failure and holds
    /// the outcomes of every command that ran. `pre_failover` stops at its first
    /// failure; the other lists run every command. An empty list is `Ok(vec![])`.
    pub async fn run(&self, kind: HookKind, ctx: &HookContext) -> Result<Vec<HookOutcome>, HookError> {
        let commands = self.section.commands(kind);
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut first_failure = None;
        for (index, template) in commands.iter().enumerate() {
            let o = self.run_one(kind, index, template, ctx).await;
            log_outcome(&o, ctx);
            let ok = o.success();
            if let Some(m) = &self.metrics {
                m.observe_hook(kind, ok);
            }
            outcomes.push(o);
            if !ok {
                first_failure.get_or_insert(outcomes.len() - 1);
                if kind.stops_at_first_failure() {
                    break;
                }
            }
        }
        match first_failure {
            None => Ok(outcomes),
            Some(at) => {
                let failed = &outcomes[at];
                Err(HookError {
                    kind,
                    index: failed.index,
                    status: failed.status.clone(),
                    stderr_tail: last_lines(&failed.stderr),
                    outcomes,
                })
            }
        }
    }

    async fn run_one(&self, kind: HookKind, index: usize, template: &str, ctx: &HookContext) -> HookOutcome {
        let started = Instant::now();
        let not_started = |why: String| HookOutcome {
            kind,
            index,
            status: HookStatus::NotStarted(why),
            duration: started.elapsed(),
            stdout: String::new(),
            stderr: String::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
        };
        let script = match render(template) {
            Ok(s) => s,
            Err(e) => return not_started(e),
        };
        let mut cmd = tokio::process::Command::new(&self.section.shell);
        cmd.arg("-c")
            .arg(&script)
            .envs(ctx.env())
            .env("PRIMUS_HOOK", kind.key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so that a timeout kills the hook's children too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return not_started(format!("cannot start {}: {e}", self.section.shell)),
        };
        // Until the shell is reaped its pid (= the group id) cannot be reused, so
        // killing the group by that id is safe up to then. If this future is dropped
        // mid-run (the failover task was cancelled), the guard kills the group.
        let mut group = GroupGuard(child.id());
        let stdout = Capture::start(child.stdout.take());
        let stderr = Capture::start(child.stderr.take());
        let timeout = self.section.timeout();
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(st)) => {
                group.disarm();
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(c), _) => HookStatus::Exited(c),
                    (None, Some(s)) => HookStatus::Signaled(s),
                    (None, None) => HookStatus::NotStarted(format!("unknown exit status {st}")),
                }
            }
            Ok(Err(e)) => {
                group.kill().await;
                let _ = child.wait().await;
                HookStatus::NotStarted(format!("cannot wait for the shell: {e}"))
            }
            Err(_) => {
                group.kill().await;
                let _ = child.start_kill();
                let _ = child.wait().await;
                HookStatus::TimedOut(timeout)
            }
        };
        let (stdout, stdout_bytes) = stdout.finish().await;
        let (stderr, stderr_bytes) = stderr.finish().await;
        HookOutcome { kind, index, status, duration: started.elapsed(), stdout, stderr, stdout_bytes, stderr_bytes }
    }
}

/// Log one outcome with its output (never the command text or the environment).
fn log_outcome(o: &HookOutcome, ctx: &HookContext) {
    let duration_ms = o.duration.as_millis() as u64;
    let (out, err) = (o.stdout.trim_end(), o.stderr.trim_end());
    if o.success() {
        tracing::info!(cluster = %ctx.failure_cluster, epoch = ctx.epoch, failover_id = %ctx.failover_id,
            hook = %o.kind, index = o.index, duration_ms, stdout = %out, stderr = %err, "hook command succeeded");
    } else {
        let consequence =
            if o.kind.stops_at_first_failure() { "vetoes the failover" } else { "logged; the failover stands" };
        tracing::warn!(cluster = %ctx.failure_cluster, epoch = ctx.epoch, failover_id = %ctx.failover_id,
            hook = %o.kind, index = o.index, status = %o.status, duration_ms, stdout = %out, stderr = %err,
            "hook command failed: {consequence}");
    }
}

/// The last few non-empty lines of `s`, on one line, bounded in length.
fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(ERROR_STDERR_LINES);
    let joined = lines[start..].join(" | ");
    let n = joined.chars().count();
    if n <= ERROR_STDERR_CHARS {
        joined
    } else {
        let tail: String = joined.chars().skip(n - ERROR_STDERR_CHARS).collect();
        format!("…{tail}")
    }
}

/// Kills a hook's process group unless disarmed (when the shell exited by itself).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }

    async fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let r = tokio::process::Command::new("kill")
                .args(kill_args(pgid))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if !r.is_ok_and(|s| s.success()) {
                kill_group_fallback(pgid);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let r = std::process::Command::new("kill")
                .args(kill_args(pgid))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !r.is_ok_and(|s| s.success()) {
                kill_group_fallback(pgid);
            }
        }
    }
}

/// `kill -s KILL -- -PGID` (kill(1) signals the whole group for a negative id;
/// this crate has no libc binding and no unsafe code).
fn kill_args(pgid: u32) -> [String; 4] {
    ["-s".into(), "KILL".into(), "--".into(), format!("-{pgid}")]
}

/// Without a kill(1) in PATH: the shell builtin (dash does not accept `--`).
fn kill_group_fallback(pgid: u32) {
    let _ = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("kill -9 -{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Bounded capture of one output stream: the head, a rolling tail, the byte count.
#[derive(Default)]
struct Buffer {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Buffer {
    fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = OUTPUT_HEAD_BYTES.saturating_sub(self.head.len());
        let n = room.min(data.len());
        self.head.extend_from_slice(&data[..n]);
        data = &data[n..];
        if data.len() >= OUTPUT_TAIL_BYTES {
            self.tail.clear();
            self.tail.extend(&data[data.len() - OUTPUT_TAIL_BYTES..]);
        } else {
            let drop = (self.tail.len() + data.len()).saturating_sub(OUTPUT_TAIL_BYTES);
            self.tail.drain(..drop);
            self.tail.extend(data);
        }
    }

    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        let omitted = self.total - self.head.len() as u64 - self.tail.len() as u64;
        if omitted > 0 {
            s.push_str(&format!("\n[… {omitted} bytes omitted …]\n"));
        }
        if !self.tail.is_empty() {
            let tail: Vec<u8> = self.tail.iter().copied().collect();
            s.push_str(&String::from_utf8_lossy(&tail));
        }
        s
    }
}

/// Reads a stream in a task of its own, so the child never blocks on a full pipe.
struct Capture {
    buf: Arc<Mutex<Buffer>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Capture {
    fn start<R: AsyncRead + Unpin + Send + 'static>(stream: Option<R>) -> Capture {
        let buf = Arc::new(Mutex::new(Buffer::default()));
        let task = stream.map(|mut r| {
            let buf = buf.clone();
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 8192];
                loop {
                    match r.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.lock().unwrap_or_else(|p| p.into_inner()).push(&chunk[..n]),
                    }
                }
            })
        });
        Capture { buf, task }
    }

    /// The captured text and total byte count, once the stream ended or after a
    /// short grace (a background process may hold the pipe open).
    async fn finish(mut self) -> (String, u64) {
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(OUTPUT_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        let b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        (b.text(), b.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_quoted_references_for_their_context() {
        let r = |t: &str| render(t).unwrap();
        assert_eq!(r("echo {failedHost}"), "echo \"${PRIMUS_FAILED_HOST}\"");
        assert_eq!(r("echo 'on {failedHost}!'"), "echo 'on '\"${PRIMUS_FAILED_HOST}\"'!'");
        assert_eq!(r("echo \"on {failedHost}\""), "echo \"on ${PRIMUS_FAILED_HOST}\"");
        assert_eq!(r("echo \"$(echo {epoch})\""), "echo \"$(echo \"${PRIMUS_EPOCH}\")\"");
        assert_eq!(r("echo ${HOME} {{epoch} \\{epoch}"), "echo ${HOME} {epoch} \\{epoch}");
        assert_eq!(r("awk '{print $1}' f; find . -exec true {} \\;"), "awk '{print $1}' f; find . -exec true {} \\;");
        assert_eq!(r("true # it's {epoch}\necho {epoch}"), "true # it's {epoch}\necho \"${PRIMUS_EPOCH}\"");
        assert!(render("echo {nope}").unwrap_err().contains("{nope}"));
    }

    #[test]
    fn buffer_keeps_head_and_tail() {
        let mut b = Buffer::default();
        b.push(&vec![b'a'; OUTPUT_HEAD_BYTES + 100]);
        b.push(&vec![b'b'; OUTPUT_TAIL_BYTES + 10]);
        b.push(b"end");
        assert_eq!(b.total, (OUTPUT_HEAD_BYTES + 100 + OUTPUT_TAIL_BYTES + 13) as u64);
        assert_eq!(b.head.len(), OUTPUT_HEAD_BYTES);
        assert_eq!(b.tail.len(), OUTPUT_TAIL_BYTES);
        let t = b.text();
        assert!(t.ends_with("bend"), "{}", &t[t.len() - 20..]);
        assert!(t.contains("[… 113 bytes omitted …]"));
    }
}
