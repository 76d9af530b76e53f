//! End-to-end tests of `gravity operation` / `plan` / `rollback`: every
//! refusal gives one clear error line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        common::gravity(&self.state(), self.dir.path(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        common::succeeded(args, self.run(args))
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        common::failed(args, self.run(args)).1
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn create(&self, plan: &Path) -> String {
        self.ok(&["operation", "create", "--plan", plan.to_str().unwrap()])
            .trim()
            .to_string()
    }
}

const PLAN: &str = r#"
phases:
  - id: a
    description: Step a
    phases:
      - id: one
        description: One
        executor: command
        data: {command: "true"}
      - id: two
        description: Two
        executor: command
        requires: [one]
        data: {command: "true"}
  - id: b
    description: Step b
    requires: [/a]
    executor: command
    data: {command: "true"}
"#;

fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("[ERROR]: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

#[test]
fn no_operation_and_unknown_operation() {
    let env = Env::new();
    let e = env.fails(&["plan"]);
    assert_eq!(
        error_line(&e),
        "[ERROR]: no operation found; start an upgrade with \"gravity upgrade\" or create an operation from a plan file with \"gravity operation create --plan FILE\""
    );
    let e = env.fails(&["plan", "--operation-id", "nope"]);
    assert!(
        error_line(&e).contains("no operation with ID nope found"),
        "{e}"
    );
    let e = env.fails(&[
        "plan",
        "execute",
        "--phase",
        "/a",
        "--operation-id",
        "../../etc",
    ]);
    assert!(
        error_line(&e).contains("no operation with ID ../../etc found"),
        "{e}"
    );
}

#[test]
fn malformed_plan_files_point_at_line_and_column() {
    let env = Env::new();
    let p = env.write("bad.yaml", "phases:\n  - id: a\n    descripton: typo\n");
    let e = env.fails(&["operation", "create", "--plan", p.to_str().unwrap()]);
    let line = error_line(&e);
    assert!(line.contains("bad.yaml:3:"), "{line}");
    assert!(line.contains("unknown field `descripton`"), "{line}");
    let p = env.write("bad.json", "{\"phases\": [}");
    let e = env.fails(&["operation", "create", "--plan", p.to_str().unwrap()]);
    assert!(error_line(&e).contains("bad.json:1:"), "{e}");
    let e = env.fails(&["operation", "create", "--plan", "/nonexistent/plan.yaml"]);
    assert!(
        error_line(&e).contains("cannot read plan file /nonexistent/plan.yaml"),
        "{e}"
    );
    // Nothing was created.
    let e = env.fails(&["plan"]);
    assert!(e.contains("no operation found"));
}

#[test]
fn broken_plans_are_refused() {
    let env = Env::new();
    let cycle = env.write(
        "cycle.yaml",
        "phases:\n  - {id: a, executor: noop, requires: [/b]}\n  - {id: b, executor: noop, requires: [/a]}\n",
    );
    let e = env.fails(&["operation", "create", "--plan", cycle.to_str().unwrap()]);
    assert!(
        error_line(&e).ends_with("the requirements between these phases form a cycle: /a, /b"),
        "{e}"
    );
    let dup = env.write(
        "dup.yaml",
        "phases:\n  - {id: a, executor: noop}\n  - {id: a, executor: noop}\n",
    );
    let e = env.fails(&["operation", "create", "--plan", dup.to_str().unwrap()]);
    assert!(error_line(&e).contains("phase /a appears twice"), "{e}");
    let missing = env.write(
        "missing.yaml",
        "phases:\n  - {id: a, executor: noop, requires: [/zz]}\n",
    );
    let e = env.fails(&["operation", "create", "--plan", missing.to_str().unwrap()]);
    assert!(
        error_line(&e).contains("phase /a requires /zz, which is not in the plan"),
        "{e}"
    );
    let unknown = env.write("unknown.yaml", "phases:\n  - {id: a, executor: teleport}\n");
    let e = env.fails(&["operation", "create", "--plan", unknown.to_str().unwrap()]);
    assert!(error_line(&e).contains("uses executor \"teleport\""), "{e}");
    let hostile = env.write(
        "hostile.yaml",
        "operation_id: ../../escape\nphases:\n  - {id: a, executor: noop}\n",
    );
    let e = env.fails(&["operation", "create", "--plan", hostile.to_str().unwrap()]);
    assert!(
        error_line(&e).contains("operation id \"../../escape\" is not valid"),
        "{e}"
    );
    assert!(!env.dir.path().join("escape").exists());
}

#[test]
fn execute_refusals() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    env.create(&plan);
    let e = env.fails(&["plan", "execute", "--phase", "/nope"]);
    assert!(
        error_line(&e).starts_with("[ERROR]: phase \"/nope\" not found"),
        "{e}"
    );
    let e = env.fails(&["plan", "execute", "--phase", "a/one"]);
    assert!(error_line(&e).contains("is not absolute"), "{e}");
    let e = env.fails(&["plan", "execute", "--phase", "/b"]);
    assert_eq!(
        error_line(&e),
        "[ERROR]: required phase \"/a\" is not completed"
    );
    let e = env.fails(&["plan", "execute", "--phase", "/a/two"]);
    assert_eq!(
        error_line(&e),
        "[ERROR]: required phase \"/a/one\" is not completed"
    );
    let e = env.fails(&["plan", "execute", "--phase", "/a", "--force"]);
    assert_eq!(
        error_line(&e),
        "[ERROR]: cannot use force with composite phase \"/a\", please only use --force on a single phase"
    );
    let out = env.ok(&["plan", "execute", "--phase", "/a"]);
    assert!(out.contains("Executing \"/a/one\" locally"), "{out}");
    assert!(out.contains("Executing phase \"/a\" finished in"), "{out}");
    // Completed phases are skipped silently.
    let out = env.ok(&["plan", "execute", "--phase", "/a/one"]);
    assert!(!out.contains("Executing \"/a/one\""), "{out}");
}

#[test]
fn rollback_refusals() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    env.create(&plan);
    let e = env.fails(&["plan", "rollback", "--phase", "/b"]);
    assert_eq!(
        error_line(&e),
        "[ERROR]: phase \"/b\" hasn't been executed yet"
    );
    env.ok(&["plan", "resume"]);
    let e = env.fails(&["plan", "rollback", "--phase", "/a"]);
    assert!(
        error_line(&e)
            .starts_with("[ERROR]: rolling back phases that have sub-phases is not supported"),
        "{e}"
    );
    let e = env.fails(&["plan", "rollback", "--phase", "/a/one"]);
    assert_eq!(
        e,
        "[ERROR]: Phase /a/one cannot be rolled back because some phases that depend on it haven't been rolled back yet. Please rollback the following phases first:\n\n\t/a/two\n\t/b\n\nYou can pass --force flag to override this check and force phase /a/one rollback.\n"
    );
    env.ok(&["plan", "rollback", "--phase", "/b"]);
    let e = env.fails(&["plan", "rollback", "--phase", "/b"]);
    assert_eq!(
        error_line(&e),
        "[ERROR]: phase \"/b\" has already been rolled back"
    );
    env.ok(&["plan", "rollback", "--phase", "/a/one", "--force"]);
    let short = env.ok(&["plan", "-o", "short"]);
    assert!(short.contains("  × one     Rolled Back"), "{short}");
}

#[test]
fn complete_and_finished_operations() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    let id = env.create(&plan);
    // A second operation is refused while the first is active.
    let e = env.fails(&["operation", "create", "--plan", plan.to_str().unwrap()]);
    assert!(
        error_line(&e).contains(&format!(
            "the last runbook operation ({id}) is still in progress"
        )),
        "{e}"
    );
    env.ok(&["plan", "execute", "--phase", "/a/one"]);
    env.ok(&["plan", "complete"]);
    let list = env.ok(&["operation", "list"]);
    assert!(list.contains(&id) && list.contains("failed"), "{list}");
    let e = env.fails(&["plan", "complete"]);
    assert_eq!(
        error_line(&e),
        format!("[ERROR]: no active operation found: operation {id} is already failed")
    );
    let e = env.fails(&["plan", "resume"]);
    assert!(
        error_line(&e).contains("its plan can no longer change"),
        "{e}"
    );
    // The lock is released: a new operation can start and run to the end.
    let id2 = env.create(&plan);
    env.ok(&["plan", "resume"]);
    env.ok(&["plan", "complete"]);
    let list = env.ok(&["operation", "list"]);
    assert!(list.lines().nth(2).unwrap().starts_with(&id2), "{list}");
    assert!(list.contains("completed"), "{list}");
}

#[test]
fn executing_a_phase_another_process_holds_is_refused() {
    let env = Env::new();
    let plan = env.write(
        "slow.yaml",
        "phases:\n  - {id: slow, description: Slow, executor: command, data: {command: \"sleep 3\"}}\n",
    );
    env.create(&plan);
    let mut first = env
        .cmd(&["plan", "execute", "--phase", "/slow"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let short = env.ok(&["plan", "-o", "short"]);
        if short.contains("In Progress") {
            break;
        }
        assert!(Instant::now() < deadline, "phase never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = env.fails(&["plan", "execute", "--phase", "/slow"]);
    let line = error_line(&e);
    assert!(
        line.contains("phase \"/slow\" is in progress (started by pid"),
        "{line}"
    );
    assert!(line.contains(&format!("pid {}", first.id())), "{line}");
    assert!(first.wait().unwrap().success());
    let short = env.ok(&["plan", "-o", "short"]);
    assert!(short.contains("✓ slow"), "{short}");
}

#[test]
fn failures_are_recorded_and_explained() {
    let env = Env::new();
    let plan = env.write(
        "fail.yaml",
        "phases:\n  - {id: boom, description: Boom, executor: command, data: {command: \"echo disk full on node-2 >&2; exit 3\"}}\n",
    );
    env.create(&plan);
    let o = env.run(&["plan", "execute", "--phase", "/boom"]);
    assert!(!o.status.success());
    let e = String::from_utf8(o.stderr).unwrap();
    assert!(e.contains("failed to execute phase \"/boom\""), "{e}");
    assert!(e.contains("exited with status 3"), "{e}");
    let table = env.ok(&["plan"]);
    assert!(table.contains("× boom"), "{table}");
    assert!(
        table.contains("The /boom phase (\"Boom\") has failed\n\t\"sh -c echo disk full"),
        "{table}"
    );
    assert!(table.contains("\tdisk full on node-2"), "{table}");
    let e = env.fails(&["plan", "--tail"]);
    assert!(
        error_line(&e).contains("the plan has stopped at failed phase(s) /boom"),
        "{e}"
    );
}

#[test]
fn still_executing_heartbeat_every_ten_seconds() {
    let env = Env::new();
    let plan = env.write(
        "slow.yaml",
        "phases:\n  - {id: slow, description: Slow, executor: command, data: {command: \"sleep 11.5\"}}\n",
    );
    env.create(&plan);
    let out = env.ok(&["plan", "execute", "--phase", "/slow"]);
    assert!(
        out.contains("\n\tStill executing \"/slow\" locally (10 seconds elapsed)\n"),
        "{out}"
    );
    assert!(
        out.contains("Executing phase \"/slow\" finished in 11 seconds"),
        "{out}"
    );
}

#[test]
fn tail_follows_until_completed() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    env.create(&plan);
    let tail = env
        .cmd(&["plan", "--tail"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    env.ok(&["plan", "resume"]);
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[  1/  3] Phase /a/one is in_progress"),
        "{text}"
    );
    assert!(text.contains("[  3/  3] Phase /b is completed"), "{text}");
    assert!(
        text.trim_end().ends_with("Operation plan is completed"),
        "{text}"
    );
}

#[test]
fn whole_rollback_asks_and_dry_run_changes_nothing() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    env.create(&plan);
    env.ok(&["plan", "resume"]);
    let out = env.ok(&["rollback", "--dry-run"]);
    assert_eq!(
        out,
        "[DRY-RUN] Rolling back \"/b\" locally\n[DRY-RUN] Rolling back \"/a/two\" locally\n[DRY-RUN] Rolling back \"/a/one\" locally\n"
    );
    assert!(env.ok(&["plan", "-o", "short"]).contains("✓ b"));
    // No answer on stdin: nothing happens.
    let o = env
        .cmd(&["rollback"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Operation has been canceled by user."));
    let out = env.ok(&["rollback", "--confirm"]);
    assert!(out.contains("Rolling back \"/b\" locally"), "{out}");
    assert!(out.contains("is failed"), "{out}");
    let short = env.ok(&["plan", "-o", "short"]);
    assert!(!short.contains('✓'), "{short}");
}

#[test]
fn every_command_is_logged_with_its_phase_transitions_and_errors() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    env.create(&plan);
    env.ok(&["plan", "execute", "--phase", "/a/one"]);
    env.fails(&["plan", "execute", "--phase", "/nope"]);
    let log = std::fs::read_to_string(env.state().join("gravity.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" command ") && l.ends_with("plan execute --phase /a/one")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" phase /a/one in_progress")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" phase /a/one completed")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" error phase \"/nope\" not found")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.ends_with(" exit failure")), "{log}");
    // Every line starts with an RFC 3339 UTC time and a pid.
    for l in &lines {
        let mut f = l.split(' ');
        assert!(
            chrono::DateTime::parse_from_rfc3339(f.next().unwrap()).is_ok(),
            "{l}"
        );
        assert!(f.next().unwrap().parse::<u32>().is_ok(), "{l}");
    }
}

#[test]
fn report_collects_plans_packages_and_recent_log() {
    let env = Env::new();
    let plan = env.write("plan.yaml", PLAN);
    let id = env.create(&plan);
    env.ok(&["plan", "execute", "--phase", "/a/one"]);
    let blob = env.write("blob", "content");
    env.ok(&[
        "package",
        "import",
        blob.to_str().unwrap(),
        "example.com/thing:1.0.0",
    ]);
    let file = env.dir.path().join("report.tar.gz");
    let out = env.ok(&["report", "--file", file.to_str().unwrap(), "--since", "1h"]);
    assert!(out.starts_with("Report with "), "{out}");
    let listing = Command::new("tar").arg("tzf").arg(&file).output().unwrap();
    let names = String::from_utf8(listing.stdout).unwrap();
    for want in [
        format!("gravity-report/operations/{id}/plan.txt"),
        format!("gravity-report/operations/{id}/plan.json"),
        "gravity-report/packages/node-local.txt".to_string(),
        "gravity-report/gravity.log".to_string(),
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} missing from {names}"
        );
    }
    let plan_txt = Command::new("tar")
        .arg("xzOf")
        .arg(&file)
        .arg(format!("gravity-report/operations/{id}/plan.txt"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&plan_txt.stdout).contains("✓ one"));
    let e = env.fails(&[
        "report",
        "--file",
        file.to_str().unwrap(),
        "--since",
        "yesterday",
    ]);
    assert!(
        error_line(&e).contains("invalid duration \"yesterday\""),
        "{e}"
    );
}
