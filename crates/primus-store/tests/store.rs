//! Behaviour of the sled store through its public API: openraft's own storage
//! suite, restarts, snapshots, format versioning and corrupt data.

use std::collections::BTreeSet;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError};
use primus_store::{LogStore, StateMachineStore, StoreError, FORMAT_VERSION, OLDEST_READABLE_FORMAT};
use primus_types::{Command, Entry, LogId, NodeId, Origin, Request, Response, TypeConfig, Vote};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `primus_store::open`, for tests that reopen a directory in the same process:
/// after the stores are dropped, sled's own background I/O threads may hold the
/// directory's lock for a moment longer (a new process, as a restarted primusd is,
/// never sees that), so a lock conflict is retried for up to 5 s.
fn open_store(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let start = std::time::Instant::now();
    loop {
        match primus_store::open(path) {
            Err(StoreError::Sled(e)) if e.to_string().contains("could not acquire lock") => {
                if start.elapsed() > std::time::Duration::from_secs(5) {
                    return Err(StoreError::Sled(e));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn lid(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn register(term: u64, index: u64, name: &str) -> Entry {
    let command = Command::RegisterCluster {
        name: name.parse().expect("valid cluster name"),
        seeds: vec!["db1.example:3306".parse().expect("valid address")],
        settings: Default::default(),
        topology: None,
    };
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(Request::new(command, Origin { actor: "test".into(), via_node: 1 })),
    }
}

fn membership(term: u64, index: u64, voters: &[NodeId]) -> Entry {
    let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
    Entry { log_id: lid(term, index), payload: EntryPayload::Membership(Membership::new(vec![voters], ())) }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: lid(term, index), payload: EntryPayload::Blank }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e))?;
        let (log, sm) = open_store(dir.path()).map_err(|e| StorageError::from(openraft::StorageIOError::write(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() -> TestResult {
    Suite::test_all(SledBuilder)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_preserves_log_vote_committed_and_state_machine() -> TestResult {
    let dir = tempfile::tempdir()?;
    let entries = vec![
        membership(1, 1, &[1, 2, 3]),
        register(1, 2, "alpha"),
        register(1, 3, "beta"),
        register(1, 4, "alpha"), // refused: already registered
        blank(2, 5),
    ];
    {
        let (mut log, mut sm) = open_store(dir.path())?;
        assert!(log.is_fresh()?, "a new directory is fresh");
        log.blocking_append(entries.clone()).await?;
        log.save_vote(&Vote::new(2, 1)).await?;
        log.save_committed(Some(lid(2, 5))).await?;
        let responses = sm.apply(entries.clone()).await?;
        assert_eq!(responses[0], Response::Internal);
        assert_eq!(responses[1], Response::Done);
        assert_eq!(responses[2], Response::Done);
        assert!(matches!(responses[3], Response::Rejected(_)));
        assert_eq!(responses[4], Response::Internal);
        log.purge(lid(1, 1)).await?;
        assert!(!log.is_fresh()?);
    }

    let (mut log, mut sm) = open_store(dir.path())?;
    assert!(!log.is_fresh()?, "a used directory is not fresh");
    assert_eq!(log.read_vote().await?, Some(Vote::new(2, 1)));
    assert_eq!(log.read_committed().await?, Some(lid(2, 5)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(lid(1, 1)));
    assert_eq!(state.last_log_id, Some(lid(2, 5)));
    let got = log.try_get_log_entries(..).await?;
    assert_eq!(got, entries[1..].to_vec(), "entries after the purged one, in order, unchanged");

    let (applied, members) = sm.applied_state().await?;
    assert_eq!(applied, Some(lid(2, 5)));
    assert_eq!(members.log_id(), &Some(lid(1, 1)));
    assert_eq!(members.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);

    let view = sm.state().cloned();
    assert_eq!(view.last_applied, Some(lid(2, 5)));
    let names: Vec<String> = view.registry.clusters.keys().map(|n| n.to_string()).collect();
    assert_eq!(names, vec!["alpha", "beta"]);
    assert_eq!(view.registry.clusters.values().next().map(|c| c.registered_at_index), Some(2));
    // Audit: the membership change and the three commands (blank entries are not audited).
    assert_eq!(view.registry.audit.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(view.registry.audit[&1].summary.contains("voters {1, 2, 3}"), "{}", view.registry.audit[&1].summary);
    assert!(view.registry.audit[&4].outcome.contains("already registered"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_survives_restart_and_installs_on_fresh_store() -> TestResult {
    let leader_dir = tempfile::tempdir()?;
    let entries = vec![membership(1, 1, &[1, 2]), register(1, 2, "alpha"), register(1, 3, "beta")];
    let built = {
        let (_log, mut sm) = open_store(leader_dir.path())?;
        sm.apply(entries).await?;
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(snapshot.meta.last_log_id, Some(lid(1, 3)));
        assert!(snapshot.meta.snapshot_id.starts_with("1-3-"), "{}", snapshot.meta.snapshot_id);
        snapshot
    };

    // The snapshot is still the current one after a restart.
    let (_log, mut sm) = open_store(leader_dir.path())?;
    let current = sm.get_current_snapshot().await?.ok_or("snapshot lost on restart")?;
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());

    // A fresh follower installs it and then holds the same state, also across a restart.
    let follower_dir = tempfile::tempdir()?;
    {
        let (_flog, mut fsm) = open_store(follower_dir.path())?;
        // State the snapshot does not have must disappear.
        fsm.apply([register(1, 1, "stale")]).await?;
        let mut receiving = fsm.begin_receiving_snapshot().await?;
        *receiving = *current.snapshot;
        fsm.install_snapshot(&current.meta, receiving).await?;
        assert_eq!(fsm.state().cloned(), sm.state().cloned());
    }
    let (_flog, mut fsm) = open_store(follower_dir.path())?;
    assert_eq!(fsm.state().cloned(), sm.state().cloned());
    assert!(!fsm.state().cloned().registry.clusters.keys().any(|n| n.to_string() == "stale"));
    let installed = fsm.get_current_snapshot().await?.ok_or("installed snapshot lost on restart")?;
    assert_eq!(installed.meta, built.meta);
    Ok(())
}

/// Rewrites the stored format version behind the store's back.
fn set_format_version(path: &Path, version: &[u8]) -> TestResult {
    let db = sled::open(path)?;
    db.open_tree("meta")?.insert("format_version", version)?;
    db.flush()?;
    Ok(())
}

fn request(command: Command, term: u64, index: u64) -> Entry {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(Request::new(command, Origin { actor: "test".into(), via_node: 1 })),
    }
}

/// Issue 14: a directory of data format 1 (each cluster's failover history inside its
/// record) is rewritten once at open with every failover record under its own key,
/// marked format 2, and holds the same state across later restarts; a failover step
/// then writes its own record only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_directory_is_migrated_with_each_failover_record_under_its_own_key() -> TestResult {
    assert_eq!(OLDEST_READABLE_FORMAT, 1);
    let dir = tempfile::tempdir()?;
    let name: primus_types::ClusterName = "alpha".parse()?;
    let addr = |p: u16| primus_types::InstanceAddr::new("db.example", p);
    let topology = primus_types::Topology::from_edges(
        vec![
            (addr(1)?, None, 1, "mariadb".into(), "10.11".into()),
            (addr(2)?, Some(addr(1)?), 2, "mariadb".into(), "10.11".into()),
        ],
        None,
    );
    let mut entries =
        vec![register(1, 1, "alpha"), request(Command::UpdateTopology { name: name.clone(), topology }, 1, 2)];
    for (i, epoch) in [(3u64, 2u64), (6, 3)] {
        let id = format!("alpha-e{epoch}");
        entries.push(request(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind: primus_types::FailoverKind::Automatic,
                analysis_code: primus_types::AnalysisCode::DeadPrimary,
                evidence: vec!["dead".into()],
                old_primary: addr(1)?,
                candidate: addr(2)?,
                epoch,
                plan: vec![],
                request_id: None,
            },
            1,
            i,
        ));
        entries.push(request(
            Command::FailoverStep {
                name: name.clone(),
                id: id.clone(),
                index: 0,
                description: "fence".into(),
                outcome: primus_types::StepOutcome::Done("done".into()),
            },
            1,
            i + 1,
        ));
        let outcome = primus_types::FailoverOutcome::Aborted("test".into());
        entries.push(request(
            Command::FinishFailover { name: name.clone(), id, outcome, promotion_gtid: None },
            1,
            i + 2,
        ));
    }
    let before = {
        let (_log, mut sm) = open_store(dir.path())?;
        sm.apply(entries).await?;
        sm.state().cloned()
    };
    assert_eq!(before.registry.clusters[&name].history.len(), 2);
    // Rewrite it as format 1 wrote it: the whole record under `c/alpha`, no `h/` keys.
    {
        let db = sled::open(dir.path())?;
        let tree = db.open_tree("state_machine")?;
        assert_eq!(tree.scan_prefix(b"h/alpha/").count(), 2, "format 2 writes a key per failover");
        for key in tree.scan_prefix(b"h/").keys() {
            tree.remove(key?)?;
        }
        tree.insert(b"c/alpha", serde_json::to_vec(&*before.registry.clusters[&name])?)?;
        db.open_tree("meta")?.insert("format_version", &1u32.to_be_bytes())?;
        db.flush()?;
    }
    {
        let (_log, sm) = open_store(dir.path())?;
        assert_eq!(sm.state().cloned(), before, "format 1 loads the same state");
    }
    {
        let db = sled::open(dir.path())?;
        assert_eq!(db.open_tree("meta")?.get("format_version")?.as_deref(), Some(&2u32.to_be_bytes()[..]));
        let tree = db.open_tree("state_machine")?;
        assert_eq!(tree.scan_prefix(b"h/alpha/").count(), 2, "each failover record under its own key");
        let core: serde_json::Value = serde_json::from_slice(&tree.get(b"c/alpha")?.ok_or("record gone")?)?;
        assert!(core.get("history").is_none(), "{core}");
    }
    let (_log, mut sm) = open_store(dir.path())?;
    assert_eq!(sm.state().cloned(), before, "and the same after another restart");
    // A third failover: applied, restarted, all three there.
    let id = "alpha-e4".to_string();
    sm.apply([request(
        Command::StartFailover {
            name: name.clone(),
            id: id.clone(),
            kind: primus_types::FailoverKind::Automatic,
            analysis_code: primus_types::AnalysisCode::DeadPrimary,
            evidence: vec![],
            old_primary: addr(1)?,
            candidate: addr(2)?,
            epoch: 4,
            plan: vec![],
            request_id: None,
        },
        1,
        9,
    )])
    .await?;
    let after = sm.state().cloned();
    drop((_log, sm));
    let (_log, sm) = open_store(dir.path())?;
    assert_eq!(sm.state().cloned(), after);
    assert_eq!(after.registry.clusters[&name].history.len(), 3);
    Ok(())
}

#[test]
fn newer_data_format_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(open_store(dir.path())?);
    set_format_version(dir.path(), &(FORMAT_VERSION + 1).to_be_bytes())?;

    let err = open_store(dir.path()).err().ok_or("a newer format must be refused")?;
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found, supported } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("format version {}", FORMAT_VERSION + 1)), "{msg}");
    assert!(msg.contains(&format!("writes version {FORMAT_VERSION}")), "{msg}");

    // An unknown (older, never released) version is refused too.
    set_format_version(dir.path(), &0u32.to_be_bytes())?;
    assert!(matches!(open_store(dir.path()), Err(StoreError::UnsupportedFormat { found: 0, .. })));
    Ok(())
}

#[test]
fn data_without_format_version_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let db = sled::open(dir.path())?;
        db.open_tree("raft_log")?.insert(1u64.to_be_bytes(), b"{}".as_slice())?;
        db.flush()?;
    }
    assert!(matches!(open_store(dir.path()), Err(StoreError::MissingFormatVersion)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_value_is_a_storage_error_not_a_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (mut log, _sm) = open_store(dir.path())?;
        log.blocking_append([blank(1, 1), blank(1, 2), blank(1, 3)]).await?;
    }
    {
        let db = sled::open(dir.path())?;
        db.open_tree("raft_log")?.insert(2u64.to_be_bytes(), b"\x00not json".as_slice())?;
        db.flush()?;
    }
    let (mut log, _sm) = open_store(dir.path())?;
    assert_eq!(log.try_get_log_entries(1..2).await?.len(), 1, "intact entries stay readable");
    let err = log.try_get_log_entries(1..4).await.err().ok_or("a corrupt entry must be an error")?;
    assert!(err.to_string().contains('2'), "{err}");

    // The same for the last entry, which get_log_state decodes.
    {
        drop((log, _sm));
        let db = sled::open(dir.path())?;
        db.open_tree("raft_log")?.insert(3u64.to_be_bytes(), b"[1,2]".as_slice())?;
        db.flush()?;
    }
    let (mut log, _sm) = open_store(dir.path())?;
    assert!(log.get_log_state().await.is_err());
    Ok(())
}

#[test]
fn corrupt_state_machine_value_is_refused_at_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(open_store(dir.path())?);
    {
        let db = sled::open(dir.path())?;
        db.open_tree("state_machine")?.insert("c/alpha", b"{not json".as_slice())?;
        db.flush()?;
    }
    let err = open_store(dir.path()).err().ok_or("a corrupt state machine must be refused")?;
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_removes_the_tail_durably_and_purge_survives_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (mut log, _sm) = open_store(dir.path())?;
        log.blocking_append((1..=10).map(|i| blank(1, i))).await?;
        log.truncate(lid(1, 8)).await?;
        log.purge(lid(1, 3)).await?;
        log.blocking_append([blank(2, 8)]).await?;
    }
    let (mut log, _sm) = open_store(dir.path())?;
    let ids: Vec<LogId> = log.try_get_log_entries(..).await?.into_iter().map(|e| e.log_id).collect();
    let mut want: Vec<LogId> = (4..=7).map(|i| lid(1, i)).collect();
    want.push(lid(2, 8));
    assert_eq!(ids, want);
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(lid(1, 3)));
    assert_eq!(state.last_log_id, Some(lid(2, 8)));
    Ok(())
}

#[test]
fn a_directory_cannot_be_opened_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _open = primus_store::open(dir.path())?;
    assert!(matches!(primus_store::open(dir.path()), Err(StoreError::Sled(_))));
    Ok(())
}

/// Set by `acknowledged_appends_survive_sigkill` for the child process it starts.
const CHILD_DIR_ENV: &str = "PRIMUS_STORE_TEST_CHILD_DIR";

/// Child half of `acknowledged_appends_survive_sigkill`: appends and reports each
/// acknowledged index until it is killed. Does nothing when run on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for acknowledged_appends_survive_sigkill"]
async fn child_appends_until_killed() -> TestResult {
    use std::io::Write;
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return Ok(());
    };
    let (mut log, mut sm) = open_store(Path::new(&dir))?;
    log.save_vote(&Vote::new(7, 1)).await?;
    println!("acked vote");
    for i in 1..=100_000u64 {
        let entry = register(1, i, &format!("c{i}"));
        log.blocking_append([entry.clone()]).await?;
        sm.apply([entry]).await?;
        println!("acked {i}");
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// A process crash (SIGKILL mid-stream) loses no acknowledged append or vote and
/// leaves a state machine that is a consistent prefix of the log. This does not
/// simulate power loss (the kernel's page cache survives a SIGKILL); that part of
/// durability rests on the callbacks waiting for `fsync`, which
/// `append_callback_fires_only_after_flush` (in `src/tests.rs`) checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() -> TestResult {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "child_appends_until_killed", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut last_acked = 0u64;
    let mut vote_acked = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        // The harness may print "test child_appends_until_killed ... " before the first line.
        if line.ends_with("acked vote") {
            vote_acked = true;
        } else if let Some((_, i)) = line.rsplit_once("acked ") {
            last_acked = i.parse()?;
            if last_acked >= 300 {
                break;
            }
        }
    }
    // SIGKILL: whatever sled still held in its in-process buffers is lost.
    child.kill()?;
    child.wait()?;
    assert!(vote_acked && last_acked >= 300, "child stopped early at {last_acked}");

    let (mut log, mut sm) = open_store(dir.path())?;
    assert_eq!(log.read_vote().await?, Some(Vote::new(7, 1)));
    let entries = log.try_get_log_entries(1..=last_acked).await?;
    assert_eq!(entries.len() as u64, last_acked, "every acknowledged entry survives");
    assert!(entries.iter().enumerate().all(|(i, e)| e.log_id.index == i as u64 + 1));
    // The state machine is not flushed on its own: it may lag, but never leads the log
    // and is always a consistent prefix (one cluster per applied entry).
    let (applied, _) = sm.applied_state().await?;
    let last_log = log.get_log_state().await?.last_log_id;
    assert!(applied <= last_log, "state machine {applied:?} ahead of log {last_log:?}");
    let clusters = sm.state().read(|s| s.registry.clusters.len() as u64);
    assert_eq!(clusters, applied.map_or(0, |a| a.index));
    Ok(())
}
