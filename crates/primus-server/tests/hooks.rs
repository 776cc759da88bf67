//! Hooks run as real processes through /bin/sh: placeholders and environment,
//! injection safety, failures, timeouts (the whole process group dies), order and
//! configuration checks.

use primus_server::hooks::{HookContext, HookKind, HookStatus, Hooks, HooksSection};
use primus_types::{FailoverKind, FailoverOutcome, FailoverRecord};
use std::path::Path;
use std::time::{Duration, Instant};

fn hooks(kind: HookKind, commands: &[String]) -> Hooks {
    hooks_with(kind, commands, |_| {})
}

fn hooks_with(kind: HookKind, commands: &[String], f: impl FnOnce(&mut HooksSection)) -> Hooks {
    let mut s = HooksSection::default();
    let list = match kind {
        HookKind::PreFailover => &mut s.pre_failover,
        HookKind::PostFailover => &mut s.post_failover,
        HookKind::PostUnsuccessfulFailover => &mut s.post_unsuccessful_failover,
        HookKind::PostSwitchover => &mut s.post_switchover,
        HookKind::Fence => &mut s.fence,
    };
    *list = commands.to_vec();
    f(&mut s);
    s.validate().expect("valid hooks section");
    Hooks::new(s)
}

fn ctx() -> HookContext {
    HookContext {
        failure_type: "DeadPrimary".into(),
        failure_description: "primary unreachable from 3/3 coordinators".into(),
        failure_cluster: "shop".into(),
        failed_host: "db1.example".into(),
        failed_port: 3306,
        successor_host: Some("db2.example".into()),
        successor_port: Some(3307),
        is_successful: true,
        epoch: 7,
        failover_id: "shop-e7".into(),
        kind: FailoverKind::Automatic,
        reason: None,
        coordinator: 2,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test]
async fn placeholders_are_substituted_and_environment_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let h = hooks(
        HookKind::PostFailover,
        &[
            format!("echo {{failedHost}}:{{failedPort}} $PRIMUS_EPOCH > '{d}/a'"),
            format!(
                "echo '{{failureType}} on {{failureCluster}}/{{failureClusterAlias}}: {{failureDescription}}' \
                 \"{{successorHost}}:{{successorPort}}\" {{isSuccessful}} {{epoch}} {{failoverId}} {{failoverKind}} \
                 [{{reason}}] {{coordinator}} > '{d}/b'"
            ),
            format!(
                "echo \"$PRIMUS_FAILURE_TYPE|$PRIMUS_FAILURE_DESCRIPTION|$PRIMUS_FAILURE_CLUSTER|$PRIMUS_FAILED_HOST|\
                 $PRIMUS_FAILED_PORT|$PRIMUS_SUCCESSOR_HOST|$PRIMUS_SUCCESSOR_PORT|$PRIMUS_IS_SUCCESSFUL|$PRIMUS_EPOCH|\
                 $PRIMUS_FAILOVER_ID|$PRIMUS_FAILOVER_KIND|$PRIMUS_REASON|$PRIMUS_COORDINATOR|$PRIMUS_HOOK\" > '{d}/c'"
            ),
        ],
    );
    let outcomes = h.run(HookKind::PostFailover, &ctx()).await.unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| o.exit_code() == Some(0)));
    assert_eq!(read(&dir.path().join("a")), "db1.example:3306 7\n");
    assert_eq!(
        read(&dir.path().join("b")),
        "DeadPrimary on shop/shop: primary unreachable from 3/3 coordinators db2.example:3307 true 7 shop-e7 \
         automatic [] 2\n"
    );
    assert_eq!(
        read(&dir.path().join("c")),
        "DeadPrimary|primary unreachable from 3/3 coordinators|shop|db1.example|3306|db2.example|3307|true|7|shop-e7|\
         automatic||2|post_failover\n"
    );

    // Before a candidate is known, the successor is empty; an unsuccessful one has a reason.
    let h = hooks(
        HookKind::PostUnsuccessfulFailover,
        &[format!("echo \"[{{successorHost}}][{{successorPort}}]\" {{isSuccessful}} '{{reason}}' > '{d}/e'")],
    );
    let c = HookContext {
        successor_host: None,
        successor_port: None,
        is_successful: false,
        reason: Some("aborted: no safe candidate".into()),
        ..ctx()
    };
    h.run(HookKind::PostUnsuccessfulFailover, &c).await.unwrap();
    assert_eq!(read(&dir.path().join("e")), "[][] false aborted: no safe candidate\n");
}

#[tokio::test]
async fn hostile_values_are_never_executed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let hostile = format!(
        "x'; touch {d}/pwned1; ' \"; touch {d}/pwned2; \" $(touch {d}/pwned3) `touch {d}/pwned4` \
         ${{HOME}} * ; touch {d}/pwned5\ntouch {d}/pwned6 #"
    );
    // The same placeholder unquoted, in '…', in "…", inside $(…) and in backticks.
    let h = hooks(
        HookKind::PostUnsuccessfulFailover,
        &[
            format!("printf '%s' {{failureDescription}} > '{d}/out1'"),
            format!("printf '%s' '<{{failureDescription}}>' > '{d}/out2'"),
            format!("printf '%s' \"<{{failureDescription}}>\" > '{d}/out3'"),
            format!("printf '%s' \"$(printf '%s' {{failureDescription}})\" > '{d}/out4'"),
            format!("printf '%s' \"`printf '%s' {{reason}}`\" > '{d}/out5'"),
            format!("printf '%s' \"$PRIMUS_REASON\" > '{d}/out6'"),
        ],
    );
    let c = HookContext { failure_description: hostile.clone(), reason: Some(hostile.clone()), ..ctx() };
    let outcomes = h.run(HookKind::PostUnsuccessfulFailover, &c).await.unwrap();
    assert_eq!(outcomes.len(), 6);
    for i in 1..=6 {
        assert!(!dir.path().join(format!("pwned{i}")).exists(), "hostile value executed (pwned{i})");
    }
    assert_eq!(read(&dir.path().join("out1")), hostile);
    assert_eq!(read(&dir.path().join("out2")), format!("<{hostile}>"));
    assert_eq!(read(&dir.path().join("out3")), format!("<{hostile}>"));
    assert_eq!(read(&dir.path().join("out4")), hostile);
    // Backticks strip trailing newlines only; the value has none.
    assert_eq!(read(&dir.path().join("out5")), hostile);
    assert_eq!(read(&dir.path().join("out6")), hostile);
}

#[tokio::test]
async fn non_zero_exit_is_an_error_naming_index_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let h = hooks(
        HookKind::PreFailover,
        &[
            "echo fine".into(),
            "echo line1 >&2; echo 'proxy layer is down' >&2; exit 3".into(),
            format!("touch '{d}/after'"),
        ],
    );
    let e = h.run(HookKind::PreFailover, &ctx()).await.unwrap_err();
    assert_eq!(e.kind, HookKind::PreFailover);
    assert_eq!(e.index, 1);
    assert_eq!(e.status, HookStatus::Exited(3));
    let msg = e.to_string();
    assert!(msg.contains("pre_failover[1]"), "{msg}");
    assert!(msg.contains("status 3"), "{msg}");
    assert!(msg.contains("line1 | proxy layer is down"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    // pre_failover is a veto: the commands after the failing one do not run.
    assert_eq!(e.outcomes.len(), 2);
    assert_eq!(e.outcomes[0].stdout, "fine\n");
    assert!(!dir.path().join("after").exists());

    // Other lists run to their end and report the first failure.
    let h = hooks(HookKind::PostFailover, &["exit 5".into(), "kill -9 $$".into(), format!("touch '{d}/after'")]);
    let e = h.run(HookKind::PostFailover, &ctx()).await.unwrap_err();
    assert_eq!((e.index, &e.status), (0, &HookStatus::Exited(5)));
    assert_eq!(e.outcomes.len(), 3);
    assert_eq!(e.outcomes[1].status, HookStatus::Signaled(9));
    assert!(e.outcomes[2].success());
    assert!(dir.path().join("after").exists());
    assert!(e.to_string().contains("1 more post_failover command(s) failed"), "{e}");
}

/// State letter of a process from /proc, or None if it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Live (not zombie) processes in process group `pgid`.
fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc is readable").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        // state ppid pgrp …
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && fields.first() != Some(&"Z") {
            live.push(pid);
        }
    }
    live
}

#[tokio::test]
async fn timeout_kills_the_hook_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let timeout_ms = 300;
    let h = hooks_with(
        HookKind::Fence,
        &[format!(
            "echo started; echo $$ > '{d}/pgid'; sleep 30 & echo $! > '{d}/child'; \
             (sleep 31; echo late) & sleep 30"
        )],
        |s| s.timeout_ms = timeout_ms,
    );
    let t = Instant::now();
    let e = h.run(HookKind::Fence, &ctx()).await.unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(timeout_ms + 1500), "took {took:?}");
    assert!(took >= Duration::from_millis(timeout_ms), "took {took:?}");
    assert_eq!(e.status, HookStatus::TimedOut(Duration::from_millis(timeout_ms)));
    assert!(e.to_string().contains("fence[0] timed out after 300 ms"), "{e}");
    assert_eq!(e.outcomes[0].stdout, "started\n");

    let pgid: u32 = read(&dir.path().join("pgid")).trim().parse().unwrap();
    let child: u32 = read(&dir.path().join("child")).trim().parse().unwrap();
    // SIGKILL was sent before run() returned; give the kernel a moment to finish.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !live_in_group(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live_in_group(pgid), Vec::<u32>::new(), "processes of the hook's group survived");
    assert!(matches!(proc_state(child), None | Some('Z')), "background child {child} survived");
    assert!(matches!(proc_state(pgid), None | Some('Z')), "hook shell {pgid} survived");
}

#[tokio::test]
async fn commands_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cmds: Vec<String> =
        (1..=4).map(|i| format!("{}echo {i} >> '{d}/order'", if i == 2 { "sleep 0.2; " } else { "" })).collect();
    let h = hooks(HookKind::PostSwitchover, &cmds);
    let outcomes = h.run(HookKind::PostSwitchover, &ctx()).await.unwrap();
    assert_eq!(outcomes.iter().map(|o| o.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(outcomes.iter().all(|o| o.kind == HookKind::PostSwitchover && o.success()));
    assert!(outcomes[1].duration >= Duration::from_millis(200));
    assert_eq!(read(&dir.path().join("order")), "1\n2\n3\n4\n");
}

#[tokio::test]
async fn empty_list_is_ok() {
    let h = Hooks::new(HooksSection::default());
    for kind in HookKind::ALL {
        assert!(!h.has(kind));
        assert_eq!(h.run(kind, &ctx()).await.unwrap(), vec![]);
    }
}

#[tokio::test]
async fn output_is_captured_and_bounded() {
    let h = hooks(HookKind::PostFailover, &["head -c 300000 /dev/zero | tr '\\0' a; echo; echo tail-end".into()]);
    let o = h.run(HookKind::PostFailover, &ctx()).await.unwrap().remove(0);
    assert_eq!(o.stdout_bytes, 300_000 + 1 + 9);
    assert!(o.stdout.len() < 80 * 1024, "{} bytes kept", o.stdout.len());
    assert!(o.stdout.starts_with("aaaa"));
    assert!(o.stdout.ends_with("a\ntail-end\n"));
    assert!(o.stdout.contains("bytes omitted"));
    assert_eq!(o.stderr, "");
}

#[tokio::test]
async fn a_background_process_holding_the_pipe_does_not_hold_the_hook() {
    let h = hooks(HookKind::PostFailover, &["echo hi; sleep 5 & exit 0".into()]);
    let t = Instant::now();
    let o = h.run(HookKind::PostFailover, &ctx()).await.unwrap().remove(0);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(o.stdout, "hi\n");
}

#[test]
fn validate_names_the_key_and_the_problem() {
    let err = |f: &dyn Fn(&mut HooksSection)| {
        let mut s = HooksSection::default();
        f(&mut s);
        s.validate().unwrap_err()
    };
    let e = err(&|s| s.post_failover = vec!["echo ok".into(), "notify --host {failedHost} {nope}".into()]);
    assert!(e.starts_with("hooks.post_failover[1]: "), "{e}");
    assert!(e.contains("unknown placeholder {nope}"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = err(&|s| s.timeout_ms = 0);
    assert!(e.starts_with("hooks.timeout_ms: "), "{e}");
    let e = err(&|s| {
        s.shell = "/no/such/shell".into();
        s.fence = vec!["true".into()];
    });
    assert!(e.starts_with("hooks.shell: ") && e.contains("/no/such/shell"), "{e}");
    let e = err(&|s| s.shell = "sh-that-is-not-in-path".into());
    assert!(e.starts_with("hooks.shell: "), "{e}");
    let e = err(&|s| s.pre_failover = vec!["echo 'unterminated".into()]);
    assert!(e.starts_with("hooks.pre_failover[0]: shell syntax error"), "{e}");
    let e = err(&|s| s.pre_failover = vec!["  ".into()]);
    assert!(e.starts_with("hooks.pre_failover[0]: must not be empty"), "{e}");
    let s = HooksSection { post_failover: vec!["echo ok".into(), "x {nope}".into()], ..Default::default() };
    assert_eq!(s.validate_keyed().unwrap_err().0, "hooks.post_failover[1]");

    // Shell syntax that looks like braces, and the escape for a literal placeholder.
    let s = HooksSection {
        pre_failover: vec![
            "awk '{print $1}' /dev/null; echo ${HOME} {a,b}; find /nonexistent -exec true {} \\; 2>/dev/null; true"
                .into(),
            "awk '{{print}' /dev/null; { echo grouped; }".into(),
            "echo '{failedHost}' \"{failedPort}\" $(echo {epoch}) # {notAPlaceholderInAComment}".into(),
        ],
        ..Default::default()
    };
    s.validate().unwrap();
    assert!(HooksSection::default().validate().is_ok());
}

#[test]
fn parses_from_toml_with_defaults_and_refuses_unknown_keys() {
    let s: HooksSection = toml::from_str("pre_failover = [\"/usr/local/bin/check {failureCluster}\"]\n").unwrap();
    assert_eq!(s.timeout_ms, 10_000);
    assert_eq!(s.shell, "/bin/sh");
    assert_eq!(s.pre_failover.len(), 1);
    assert!(s.post_failover.is_empty());
    let e = toml::from_str::<HooksSection>("pre_failovr = []\n").unwrap_err().to_string();
    assert!(e.contains("pre_failovr"), "{e}");
}

#[test]
fn kinds_display_as_config_keys_and_follow_outcomes() {
    let keys: Vec<String> = HookKind::ALL.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["pre_failover", "post_failover", "post_unsuccessful_failover", "post_switchover", "fence"]);
    assert_eq!(HookKind::after(FailoverKind::Switchover, &FailoverOutcome::Succeeded), HookKind::PostSwitchover);
    assert_eq!(HookKind::after(FailoverKind::Automatic, &FailoverOutcome::Succeeded), HookKind::PostFailover);
    assert_eq!(
        HookKind::after(FailoverKind::Switchover, &FailoverOutcome::Aborted("x".into())),
        HookKind::PostUnsuccessfulFailover
    );
}

#[test]
fn context_from_a_failover_record() {
    let f = FailoverRecord {
        id: "shop-e4".into(),
        kind: FailoverKind::Manual,
        analysis_code: primus_types::AnalysisCode::DeadPrimary,
        evidence: vec!["a".into(), "b".into()],
        old_primary: "db1:3306".parse().unwrap(),
        candidate: "db2:3307".parse().unwrap(),
        epoch: 4,
        plan: vec![],
        steps: vec![],
        started_at_ms: 1,
        started_index: 2,
        started_by: "op".into(),
        outcome: Some(FailoverOutcome::Failed("repoint db3: refused".into())),
        finished_at_ms: Some(3),
        promotion_gtid: None,
        promotion_binlog_state: None,
        acked_by: None,
        request_id: None,
    };
    let c = HookContext::from_record(&"shop".parse().unwrap(), &f, 3);
    assert_eq!(c.failure_type, "DeadPrimary");
    assert_eq!(c.failure_description, "a; b");
    assert_eq!((c.failed_host.as_str(), c.failed_port), ("db1", 3306));
    assert_eq!((c.successor_host.as_deref(), c.successor_port), (Some("db2"), Some(3307)));
    assert!(!c.is_successful);
    assert_eq!(c.reason.as_deref(), Some("failed: repoint db3: refused"));
    assert_eq!((c.epoch, c.failover_id.as_str(), c.kind, c.coordinator), (4, "shop-e4", FailoverKind::Manual, 3));
    let env = c.env();
    assert!(env.contains(&("PRIMUS_FAILOVER_KIND", "manual".into())));
    assert!(env.contains(&("PRIMUS_IS_SUCCESSFUL", "false".into())));
}
