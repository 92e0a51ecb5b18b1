//! Helpers the operator program's test files share.
// Each test file uses what it needs.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The program under test.
pub fn sg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluicegate"))
}

/// Runs the program with `stdin` as input.
pub fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = sg()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluicegate");
    let mut input = child.stdin.take().expect("stdin");
    // A program that fails at once may close its stdin first: that is not the test's failure.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("wait")
}

/// A port free on the loopback interface now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until `done` holds, failing after a generous bound.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mosquitto broker on a loopback port, its state (sessions, queued messages) kept in `dir`
/// across a stop and a start; stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The broker program, or `None` (with a loud message) where it is not installed: `cargo xtask
/// ci` installs it.
pub fn mosquitto_program() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    let sub = Path::new("/usr/bin/mosquitto_sub").exists();
    if found.is_none() || !sub {
        assert!(
            std::env::var_os("SLUICEGATE_REQUIRE_BROKERS").is_none(),
            "mosquitto is required (SLUICEGATE_REQUIRE_BROKERS) but not installed"
        );
        eprintln!(
            "\n*** SKIPPED: mosquitto or mosquitto_sub is not installed (`cargo xtask ci` installs them: apt-get install mosquitto mosquitto-clients) ***\n"
        );
        return None;
    }
    found
}

impl Mosquitto {
    pub fn start(program: &Path, dir: &Path) -> Mosquitto {
        Self::start_with(program, dir, "")
    }

    /// A broker whose configuration ends with `extra` lines.
    pub fn start_with(program: &Path, dir: &Path, extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        std::fs::create_dir_all(dir).expect("broker dir");
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                // Mosquitto keeps at most 1,000 messages for a subscriber that is away by
                // default and drops the rest silently, after acknowledging them to the sink;
                // and started as root it saves its state as user `mosquitto` unless told.
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nuser root\n{extra}",
                m.port,
                dir.display()
            ),
        )
        .expect("broker config");
        m.resume(program);
        m
    }

    /// Starts the broker (again), and waits until it listens.
    pub fn resume(&mut self, program: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        let child = Command::new(program)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        eventually("the broker to listen", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `mosquitto_sub` as client `id` with a persistent session (`-c`) at QoS 1 on `topic`,
/// writing what arrives to `out`, with `extra` arguments (a protocol version, an output
/// format): an independent client reading back what reached the broker. It reconnects by
/// itself after a broker stop; killed when dropped.
pub struct Subscriber(Child);

impl Subscriber {
    pub fn start(port: u16, topic: &str, id: &str, extra: &[&str], out: &Path) -> Subscriber {
        let file = std::fs::File::create(out).expect("subscriber output");
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-c", "-i", id, "-t", topic])
            .args(extra)
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        Subscriber(child)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
