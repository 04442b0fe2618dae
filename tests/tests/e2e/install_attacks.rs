//! Root-run `ca-client install` against a hostile service account: DEST
//! belongs to `nobody`, who plants symlinks (lock, `current`, generation
//! directories), races every install by swapping the new generation for its
//! own directory of links to victim files, and writes a pid file naming an
//! unrelated process. Victims are root-owned files outside DEST; none may
//! change owner, mode or content, and no process but the service's may be
//! signalled. Also: key directories owned by another user are refused.

use ca_tests::fleet::{Host, bootstrap, install};
use ca_tests::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WEB: &str = "web.example.internal";
/// The hostile service account.
const NOBODY: u32 = 65534;

/// These tests need root (to own victims and chown DEST to `nobody`). CI
/// runs as root, so there a non-root run is a failure, not a skip.
fn require_root() -> bool {
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        return true;
    }
    if in_ci() {
        panic!("the installer attack tests must run as root under CI=true");
    }
    eprintln!("SKIP: the installer attack tests need root");
    false
}

/// Root-owned victim files outside DEST, and a name that must never appear.
struct Victims {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
    absent: PathBuf,
}

/// Owner, mode and content of a file.
type Snapshot = Vec<(PathBuf, u32, u32, u32, Vec<u8>)>;

impl Victims {
    fn new() -> Victims {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut files = Vec::new();
        for (name, mode, body) in [
            ("shadow", 0o600, "root:secret-hash:19000::::::\n"),
            ("config", 0o644, "public but root's\n"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            files.push(p);
        }
        let absent = dir.path().join("created-by-root");
        Victims { dir, files, absent }
    }

    fn snapshot(&self) -> Snapshot {
        self.files
            .iter()
            .map(|p| {
                let m = std::fs::symlink_metadata(p).unwrap();
                (p.clone(), m.uid(), m.gid(), m.mode(), read(p))
            })
            .collect()
    }

    /// Nothing changed since `before`, and nothing new appeared.
    fn assert_unchanged(&self, before: &Snapshot) {
        assert_eq!(&self.snapshot(), before, "a victim file changed");
        assert!(
            !self.absent.exists(),
            "root created {}",
            self.absent.display()
        );
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), self.files.len(), "new files: {names:?}");
    }
}

/// A CA, one bootstrapped host, and a work directory `nobody` can traverse
/// holding DEST, owned by `nobody`.
struct Setup {
    _ca: CaServer,
    work: tempfile::TempDir,
    host: Host,
    dest: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let mut ca = CaServer::start();
        let work = tempfile::tempdir().unwrap();
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = bootstrap(&mut ca, WEB, work.path(), "host");
        let dest = work.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::os::unix::fs::chown(&dest, Some(NOBODY), Some(NOBODY)).unwrap();
        Setup {
            _ca: ca,
            work,
            host,
            dest,
        }
    }

    /// `install nginx --owner nobody`, no reload, a check that always passes.
    fn install(&self) -> Command {
        install(
            "nginx",
            &self.host,
            &self.dest,
            &["--owner", "nobody", "--no-reload", "--check", "true"],
        )
    }

    /// A directory of links named like the installer's files, to `target`.
    fn attacker_dir(&self, name: &str, target: &Path) -> PathBuf {
        let a = self.work.path().join(name);
        std::fs::create_dir(&a).unwrap();
        for f in ["privkey.pem", "fullchain.pem", "ca.pem", "nginx-ssl.conf"] {
            symlink(target, a.join(f)).unwrap();
        }
        std::os::unix::fs::lchown(&a, Some(NOBODY), Some(NOBODY)).unwrap();
        a
    }
}

/// Runs a command that must fail; returns its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "should have failed:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn a_planted_lock_symlink_is_refused() {
    if !require_root() {
        return;
    }
    let s = Setup::new();
    let victims = Victims::new();
    let before = victims.snapshot();
    for target in [&victims.files[0], &victims.absent] {
        let lock = s.dest.join(".install.lock");
        let _ = std::fs::remove_file(&lock);
        symlink(target, &lock).unwrap();
        let err = fails(&mut s.install());
        assert!(
            err.contains(".install.lock is a symlink; refusing to follow it"),
            "{err}"
        );
        victims.assert_unchanged(&before);
    }
}

#[test]
fn a_planted_current_or_generation_is_refused() {
    if !require_root() {
        return;
    }
    let s = Setup::new();
    let victims = Victims::new();
    let before = victims.snapshot();
    let attacker = s.attacker_dir("attacker", &victims.files[0]);
    let cur = s.dest.join("current");

    // current -> a directory outside DEST whose files link to victims.
    symlink(&attacker, &cur).unwrap();
    let err = fails(&mut s.install());
    assert!(
        err.contains("not to a generation directory inside DEST; refusing it"),
        "{err}"
    );
    victims.assert_unchanged(&before);

    // current -> gen-x, where gen-x is a symlink to that directory.
    std::fs::remove_file(&cur).unwrap();
    symlink(&attacker, s.dest.join("gen-x")).unwrap();
    symlink("gen-x", &cur).unwrap();
    let err = fails(&mut s.install());
    assert!(
        err.contains("gen-x is a symlink, not a generation directory"),
        "{err}"
    );
    victims.assert_unchanged(&before);

    // current -> gen-y, a real directory of links, made by nobody.
    std::fs::remove_file(s.dest.join("gen-x")).unwrap();
    std::fs::remove_file(&cur).unwrap();
    std::fs::rename(&attacker, s.dest.join("gen-y")).unwrap();
    symlink("gen-y", &cur).unwrap();
    let err = fails(&mut s.install());
    assert!(
        err.contains(&format!(
            "gen-y belongs to uid {NOBODY}, not to the installing user"
        )),
        "{err}"
    );
    victims.assert_unchanged(&before);

    // Once the planted entries are gone the install works, and then a
    // current pointing inside a generation (not at one) is refused too.
    std::fs::remove_dir_all(s.dest.join("gen-y")).unwrap();
    std::fs::remove_file(&cur).unwrap();
    run_ok(&mut s.install());
    let live = std::fs::read_link(&cur).unwrap();
    assert_eq!(
        std::fs::symlink_metadata(s.dest.join(&live)).unwrap().uid(),
        0,
        "generation directories belong to the installing user"
    );
    assert_eq!(
        std::fs::metadata(cur.join("privkey.pem")).unwrap().uid(),
        NOBODY
    );
    std::fs::remove_file(&cur).unwrap();
    symlink(live.join("privkey.pem"), &cur).unwrap();
    let err = fails(&mut s.install());
    assert!(
        err.contains("not to a generation directory inside DEST"),
        "{err}"
    );
    victims.assert_unchanged(&before);
}

/// The racer, run as `nobody`: swaps every new generation directory for its
/// own directory of links to the victims, or for a symlink to the victims'
/// directory (keeping the real one elsewhere), and points `current` at a
/// directory of links, until `DEST/.stop` exists.
const RACER: &str = r#"
D=$1; V1=$2; V2=$3; A=$4; i=0
while [ ! -e "$D/.stop" ]; do
  for g in "$D"/gen-*; do
    [ -d "$g" ] && [ ! -L "$g" ] && [ ! -O "$g" ] || continue
    i=$((i+1))
    mv "$g" "$D/.stolen-$i" 2>/dev/null || continue
    if [ $((i % 3)) -eq 0 ]; then
      # Or the generation's name as a symlink to the victims' directory.
      ln -s "$(dirname "$V1")" "$g" 2>/dev/null
      continue
    fi
    mkdir "$g" 2>/dev/null || continue
    for f in privkey.pem fullchain.pem ca.pem nginx-ssl.conf; do
      ln -s "$V1" "$g/$f"; ln -s "$V2" "$g/.$f.tmp"
    done
  done
  ln -sfn "$A" "$D/.cur-$i" && mv -T "$D/.cur-$i" "$D/current" 2>/dev/null
  i=$((i+1))
done
echo "$i" > "$D/.racer-rounds"
"#;

#[test]
fn racing_the_generation_switch_never_touches_files_outside_dest() {
    if !require_root() {
        return;
    }
    let s = Setup::new();
    let victims = Victims::new();
    let before = victims.snapshot();
    let attacker = s.attacker_dir("attacker", &victims.files[1]);
    let mut racer = Command::new("sh")
        .arg("-c")
        .arg(RACER)
        .arg("racer")
        .arg(&s.dest)
        .arg(&victims.files[0])
        .arg(&victims.files[1])
        .arg(&attacker)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped even if an assertion below fails.
    let racer_guard = KillOnDrop(racer.id());

    let (mut ok, mut refused) = (0, Vec::new());
    for _ in 0..100 {
        let out = run(&mut s.install());
        if out.status.success() {
            ok += 1;
        } else {
            refused.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        // The administrator clears what the attacker planted, so every
        // round races a fresh install instead of a refused DEST.
        for e in std::fs::read_dir(&s.dest).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // The racer may have moved it since the listing.
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if name.starts_with("gen-") && (m.uid() != 0 || m.file_type().is_symlink()) {
                if m.file_type().is_symlink() {
                    let _ = std::fs::remove_file(e.path());
                } else {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            if name == "current" {
                let _ = std::fs::remove_file(e.path());
            }
        }
        victims.assert_unchanged(&before);
    }
    std::fs::write(s.dest.join(".stop"), "").unwrap();
    let status = racer.wait().unwrap();
    std::mem::forget(racer_guard);
    assert!(status.success(), "the racer failed: {status}");
    let rounds: u64 = std::fs::read_to_string(s.dest.join(".racer-rounds"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "{ok} installs went through, {} refused, racer rounds {rounds}",
        refused.len()
    );
    // The race must actually have been run: the racer swapped generations.
    let stolen = std::fs::read_dir(&s.dest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".stolen-"))
        .count();
    assert!(stolen > 0, "the racer never swapped a generation");
    let mut reasons: Vec<&str> = refused
        .iter()
        .map(|e| {
            e.lines()
                .next()
                .unwrap_or("")
                .rsplit(": ")
                .next()
                .unwrap_or("")
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!("refusal reasons: {reasons:#?}");
    for err in &refused {
        assert!(
            err.contains("refusing") || err.contains("not the empty directory"),
            "a refusal must say why:\n{err}"
        );
    }
    victims.assert_unchanged(&before);
}

/// Kills the racer (a child of this test) if the test fails early.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// A data directory owned by `nobody` whose postmaster.pid names `pid`.
fn fake_pgdata(work: &Path, name: &str, pid: u32) -> PathBuf {
    let pgdata = work.join(name);
    std::fs::create_dir(&pgdata).unwrap();
    let file = pgdata.join("postmaster.pid");
    std::fs::write(
        &file,
        format!(
            "{pid}\n{}\n1700000000\n5432\n/tmp\n127.0.0.1\n  1  2\nready   \n",
            pgdata.display()
        ),
    )
    .unwrap();
    for p in [&pgdata, &file] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    pgdata
}

/// Whether the child is still running (not signalled to death).
fn alive(child: &mut std::process::Child) -> bool {
    child.try_wait().unwrap().is_none()
}

#[test]
fn a_pid_file_naming_another_process_is_not_signalled() {
    if !require_root() {
        return;
    }
    let s = Setup::new();
    // sleep as root: the pid file's owner (nobody) does not run it.
    let mut as_root = Command::new("sleep").arg("600").spawn().unwrap();
    // sleep as nobody: the right user, but not the postgres binary.
    let mut as_nobody = Command::new("sleep")
        .arg("600")
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .unwrap();
    // Both are stopped even if an assertion below fails.
    let _guards = [KillOnDrop(as_root.id()), KillOnDrop(as_nobody.id())];
    let cases = [
        (
            &mut as_root,
            format!("runs as uid 0 (effective 0), not as uid {NOBODY}, the owner of the pid file"),
        ),
        (
            &mut as_nobody,
            "which is not the postgres binary".to_owned(),
        ),
    ];
    for (i, (child, why)) in cases.into_iter().enumerate() {
        let pgdata = fake_pgdata(s.work.path(), &format!("pgdata{i}"), child.id());
        let dest = s.work.path().join(format!("pgtls{i}"));
        let mut cmd = install("postgres", &s.host, &dest, &[]);
        cmd.arg("--pgdata").arg(&pgdata);
        let out = run(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{err}");
        assert!(
            err.contains(&format!("refusing to signal pid {}", child.id())),
            "{err}"
        );
        assert!(err.contains(&why), "{err}");
        assert!(err.contains("previous files were put back"), "{err}");
        assert!(alive(child), "the unrelated process was signalled");
    }
    // The same for nginx's pid file: owned by nobody and naming root's
    // process, or owned by root and naming a process that is not nginx.
    for (i, (owner, why)) in [
        (
            NOBODY,
            format!("runs as uid 0 (effective 0), not as uid {NOBODY}, the owner of the pid file"),
        ),
        (0, "which is not the nginx binary".to_owned()),
    ]
    .into_iter()
    .enumerate()
    {
        let pid_file = write_file(
            s.work.path(),
            &format!("nginx{i}.pid"),
            format!("{}\n", as_root.id()),
        );
        std::os::unix::fs::chown(&pid_file, Some(owner), Some(owner)).unwrap();
        let dest = s.work.path().join(format!("nginxtls{i}"));
        let mut cmd = install("nginx", &s.host, &dest, &["--check", "true"]);
        cmd.arg("--pid-file").arg(&pid_file);
        let out = run(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{err}");
        assert!(
            err.contains(&format!("refusing to signal pid {}", as_root.id())),
            "{err}"
        );
        assert!(err.contains(&why), "{err}");
        assert!(alive(&mut as_root), "the unrelated process was signalled");
    }
    drop(_guards);
    for mut c in [as_root, as_nobody] {
        let _ = c.wait();
    }
}

#[test]
fn key_directories_of_another_user_are_refused_and_open_ones_tightened() {
    if !require_root() {
        return;
    }
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();

    // An existing 0755 directory: bootstrap tightens it to 0700.
    let open = work.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let psk = ca.psk_add(WEB, &[]);
    let psk_file = write_file(work.path(), "web.psk", &psk);
    run_ok(&mut ca.bootstrap_cmd(WEB, &psk_file, &open));
    assert_eq!(
        std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // renew and crl tighten it again.
    for verb in ["renew", "crl"] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = run(&mut ca_tests::fleet::ca_client_verb(verb, &ca, &open));
        assert_eq!(
            std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o700,
            "{verb}"
        );
    }

    // A directory owned by another user: refused before the PSK is used.
    let theirs = work.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let psk = ca.psk_add("other.example.internal", &[]);
    let psk_file = write_file(work.path(), "other.psk", &psk);
    let err = fails(&mut ca.bootstrap_cmd("other.example.internal", &psk_file, &theirs));
    assert!(
        err.contains(&format!(
            "belongs to uid {NOBODY}, not to the invoking user"
        )),
        "{err}"
    );
    assert!(psk_file.exists(), "the PSK file must be kept");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    // renew in such a directory is refused too.
    std::os::unix::fs::chown(&open, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = fails(&mut ca_tests::fleet::ca_client_verb("renew", &ca, &open));
    assert!(err.contains("not to the invoking user"), "{err}");
}

/// The server's data dir holds the CA keys: `init` (and `serve`, which
/// initialises) tightens an open one of the invoking user to 0700 and
/// refuses one that belongs to another user, touching nothing in it.
#[test]
fn a_data_dir_of_another_user_is_refused_and_an_open_one_tightened() {
    if !require_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let init = |dir: &Path| {
        let mut cmd = Command::new(bin("ca-server"));
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["init", "--name", "E2E"]);
        cmd
    };
    let open = work.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(&mut init(&open));
    assert_eq!(
        std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Opened up again after init: the next start tightens it again.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(&mut init(&open));
    assert_eq!(
        std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let theirs = work.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = fails(&mut init(&theirs));
    assert!(
        err.contains(&format!(
            "belongs to uid {NOBODY}, not to the invoking user"
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        0,
        "nothing written"
    );
}
