//! Encryption at rest on files: key files raw and wrapped, rotation across runs, and a clear
//! error for every bad key configuration.

use std::path::{Path, PathBuf};

use sluicegate_core::record::{
    SealRecord, SegmentCheck, SegmentHeader, RECORD_HEADER_BYTES, SEAL_PAYLOAD_BYTES,
    SEGMENT_FLAG_SEALED, SEGMENT_HEADER_BYTES,
};
use sluicegate_core::Algorithm;
use sluicegate_file::{
    new_key_line, wrap_key, write_secret_file, AlgorithmChoice, EncryptionConfig, FileChannel,
    FileChannelConfig, KeyConfig,
};

fn small(root: &Path) -> FileChannelConfig {
    FileChannelConfig {
        capacity: 1000,
        transaction_capacity: 100,
        max_file_bytes: 64 * 1024,
        log_files: 8,
        max_event_bytes: 4096,
        minimum_required_space_bytes: 0,
        checkpoint_interval_ms: 0,
        keep_alive_ms: 0,
        ..FileChannelConfig::in_dir(root)
    }
}

fn key_file(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    write_secret_file(&p, &new_key_line().unwrap()).unwrap();
    p
}

fn raw(id: u16, alias: &str, file: &Path) -> KeyConfig {
    KeyConfig {
        id,
        alias: alias.into(),
        key_file: file.to_path_buf(),
        password_file: None,
    }
}

fn sealed(root: &Path, active: Option<&str>, keys: Vec<KeyConfig>) -> FileChannelConfig {
    FileChannelConfig {
        encryption: EncryptionConfig {
            active_key: active.map(str::to_string),
            keys,
            ..EncryptionConfig::default()
        },
        ..small(root)
    }
}

/// `config` sealing new segments with `algorithm`.
fn with_algorithm(mut config: FileChannelConfig, algorithm: AlgorithmChoice) -> FileChannelConfig {
    config.encryption.algorithm = algorithm;
    config
}

/// The algorithm of every sealed segment in the home's data directory, in slot order (read
/// from the seal records on disk).
fn algorithms_on_disk(home: &Path) -> Vec<Algorithm> {
    let mut files: Vec<_> = std::fs::read_dir(home.join("data"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    let mut found = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let SegmentCheck::Valid(h) =
            SegmentHeader::decode(bytes[..SEGMENT_HEADER_BYTES].try_into().unwrap())
        else {
            continue;
        };
        if h.flags & SEGMENT_FLAG_SEALED != 0 {
            let at = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES;
            let payload = bytes[at..at + SEAL_PAYLOAD_BYTES].try_into().unwrap();
            found.push(SealRecord::decode(payload).unwrap().algorithm);
        }
    }
    found
}

fn put_all(config: FileChannelConfig, events: &[String]) {
    let ch = FileChannel::open(config).unwrap();
    let mut tx = ch.begin().unwrap();
    for e in events {
        tx.put(e.as_bytes()).unwrap();
    }
    tx.commit().unwrap();
    ch.close().unwrap();
}

fn take_all(config: FileChannelConfig) -> Vec<String> {
    let ch = FileChannel::open(config).unwrap();
    let mut tx = ch.begin().unwrap();
    let mut got = Vec::new();
    while let Some(e) = tx.take_vec().unwrap() {
        got.push(String::from_utf8(e).unwrap());
    }
    tx.commit().unwrap();
    ch.close().unwrap();
    got
}

fn events(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-event-{i:04}")).collect()
}

/// Every byte of every file under `root` (key files excepted) searched for `needle`.
fn found_in_files(root: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_none_or(|x| x != "key") {
                let bytes = std::fs::read(&p).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
    }
    false
}

/// A raw and a wrapped key: events go in sealed (none in the clear on disk) and come out intact
/// after a reopen that replays the log without a checkpoint.
#[test]
fn sealed_channel_round_trip_with_raw_and_wrapped_keys() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Plaintext first, as the control for the search below.
    let plain = r.join("plain");
    std::fs::create_dir(&plain).unwrap();
    put_all(small(&plain), &events("plain", 5));
    assert!(found_in_files(&plain, b"plain-event-0003"));

    let k1 = key_file(r, "one.key");
    let k2raw = key_file(r, "two-raw.key");
    let pw = r.join("two.pass");
    write_secret_file(&pw, "correct horse").unwrap();
    let wrapped = r.join("two.key");
    let line = wrap_key(
        &std::fs::read_to_string(&k2raw).unwrap(),
        b"correct horse",
        1000,
    )
    .unwrap();
    write_secret_file(&wrapped, &line).unwrap();
    let keys = vec![
        raw(1, "one", &k1),
        KeyConfig {
            id: 2,
            alias: "two".into(),
            key_file: wrapped.clone(),
            password_file: Some(pw.clone()),
        },
    ];
    for (active, algorithm, expect) in [
        (
            "one",
            AlgorithmChoice::XChaCha20Poly1305,
            Algorithm::XChaCha20Poly1305,
        ),
        ("one", AlgorithmChoice::Aes256Gcm, Algorithm::Aes256Gcm),
        ("two", AlgorithmChoice::Aes256Gcm, Algorithm::Aes256Gcm),
        (
            "two",
            AlgorithmChoice::Auto,
            AlgorithmChoice::Auto.resolve(),
        ),
    ] {
        let home = r.join(format!("{active}-{algorithm:?}"));
        std::fs::create_dir(&home).unwrap();
        let config = FileChannelConfig {
            checkpoint_on_close: false,
            ..with_algorithm(sealed(&home, Some(active), keys.clone()), algorithm)
        };
        let put = events(active, 50);
        put_all(config.clone(), &put);
        assert!(!found_in_files(
            &home,
            format!("{active}-event-0003").as_bytes()
        ));
        assert_eq!(algorithms_on_disk(&home), [expect]);
        assert_eq!(take_all(config), put);
    }
}

/// Plaintext, then key 1, then key 2: everything reads back in order; once the log no longer
/// needs key 1 it can be dropped from the configuration.
#[test]
fn plaintext_then_sealed_then_rotated() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let k1 = key_file(r, "k1.key");
    let k2 = key_file(r, "k2.key");
    let both = vec![raw(1, "k1", &k1), raw(2, "k2", &k2)];
    let home = r.join("ch");
    std::fs::create_dir(&home).unwrap();
    put_all(small(&home), &events("a", 10));
    let xchacha = AlgorithmChoice::XChaCha20Poly1305;
    put_all(
        with_algorithm(sealed(&home, Some("k1"), both.clone()), xchacha),
        &events("b", 10),
    );
    let gcm = AlgorithmChoice::Aes256Gcm;
    put_all(
        with_algorithm(sealed(&home, Some("k2"), both.clone()), gcm),
        &events("c", 10),
    );
    assert_eq!(
        algorithms_on_disk(&home),
        [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm]
    );
    // Without key 1 the log cannot be read: a clear error naming the id.
    let err = FileChannel::open(sealed(&home, Some("k2"), vec![raw(2, "k2", &k2)]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key 1") && err.contains("[[encryption.keys]]"),
        "{err}"
    );
    let mut all = events("a", 10);
    all.extend(events("b", 10));
    all.extend(events("c", 10));
    assert_eq!(take_all(sealed(&home, Some("k2"), both.clone())), all);
    // Drained and checkpointed: a run on key 2 alone writes a new segment and needs nothing else.
    put_all(sealed(&home, Some("k2"), both), &events("d", 3));
    assert_eq!(
        take_all(sealed(&home, Some("k2"), vec![raw(2, "k2", &k2)])),
        events("d", 3)
    );
}

/// Opening a sealed channel without keys, or with another key under its id, fails clearly.
#[test]
fn missing_or_wrong_key_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let k1 = key_file(r, "k1.key");
    let other = key_file(r, "other.key");
    let home = r.join("ch");
    std::fs::create_dir(&home).unwrap();
    put_all(
        sealed(&home, Some("k1"), vec![raw(1, "k1", &k1)]),
        &events("x", 5),
    );
    let err = FileChannel::open(small(&home)).unwrap_err().to_string();
    assert!(err.contains("sealed with key 1"), "{err}");
    let err = FileChannel::open(sealed(&home, None, vec![raw(1, "k1", &other)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("key 1 does not open the log"), "{err}");
    // The right key still opens it: nothing was changed by the refusals.
    assert_eq!(
        take_all(sealed(&home, None, vec![raw(1, "k1", &k1)])),
        events("x", 5)
    );
}

/// Every bad key setting is refused before anything is created, naming what is wrong.
#[test]
fn bad_key_configurations_are_refused_clearly() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let good = key_file(r, "good.key");
    let pw = r.join("pw");
    write_secret_file(&pw, "secret").unwrap();
    let wrapped = r.join("wrapped.key");
    let line = wrap_key(&std::fs::read_to_string(&good).unwrap(), b"secret", 1000).unwrap();
    write_secret_file(&wrapped, &line).unwrap();
    let wrong_pw = r.join("wrong-pw");
    write_secret_file(&wrong_pw, "Secret").unwrap();
    let open_to_all = r.join("open.key");
    std::fs::write(&open_to_all, new_key_line().unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let short = r.join("short.key");
    write_secret_file(&short, "abcd").unwrap();
    let a_dir = r.join("a-directory.key");
    std::fs::create_dir(&a_dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let with_pw = |file: &Path, pw: &Path| KeyConfig {
        password_file: Some(pw.to_path_buf()),
        ..raw(1, "k", file)
    };
    let cases: Vec<(&str, Option<&str>, Vec<KeyConfig>)> = vec![
        (
            "is not among encryption.keys (aliases: k)",
            Some("nope"),
            vec![raw(1, "k", &good)],
        ),
        ("aliases: none", Some("k"), vec![]),
        ("id 0 means plaintext", None, vec![raw(0, "k", &good)]),
        (
            "is also given to",
            None,
            vec![raw(1, "k", &good), raw(1, "j", &good)],
        ),
        (
            "is used twice",
            None,
            vec![raw(1, "k", &good), raw(2, "k", &good)],
        ),
        (
            "cannot read the key file",
            None,
            vec![raw(1, "k", &r.join("missing.key"))],
        ),
        ("cannot read the key file", None, vec![raw(1, "k", &a_dir)]),
        (
            "can be read by other users",
            None,
            vec![raw(1, "k", &open_to_all)],
        ),
        ("expected 64 hex digits", None, vec![raw(1, "k", &short)]),
        ("wrong password", None, vec![with_pw(&wrapped, &wrong_pw)]),
        ("set password_file", None, vec![raw(1, "k", &wrapped)]),
        ("holds a raw key", None, vec![with_pw(&good, &pw)]),
        (
            "cannot read the password file",
            None,
            vec![with_pw(&wrapped, &r.join("no-pw"))],
        ),
    ];
    for (i, (needle, active, keys)) in cases.into_iter().enumerate() {
        let home = r.join(format!("home-{i}"));
        std::fs::create_dir(&home).unwrap();
        let config = sealed(&home, active, keys);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains(needle),
            "case {i}: {err:?} should say {needle:?}"
        );
        let err = FileChannel::open(config).unwrap_err().to_string();
        assert!(err.contains(needle), "case {i}: {err:?}");
        assert!(
            std::fs::read_dir(&home).unwrap().next().is_none(),
            "case {i}: nothing is created"
        );
    }
    // The good ones are accepted.
    sealed(r, Some("k"), vec![with_pw(&wrapped, &pw)])
        .validate()
        .unwrap();
}

/// The `[encryption]` section in TOML, with key paths relative to the file.
#[test]
fn encryption_settings_load_from_toml() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    key_file(r, "k1.key");
    let text = r#"
        capacity = 1000
        transaction_capacity = 100
        max_file_bytes = 65536
        log_files = 4
        max_event_bytes = 4096
        minimum_required_space_bytes = 0

        [encryption]
        active_key = "first"
        algorithm = "aes-256-gcm"

        [[encryption.keys]]
        id = 1
        alias = "first"
        key_file = "k1.key"
    "#;
    let path = r.join("sluicegate.toml");
    std::fs::write(&path, text).unwrap();
    let config = FileChannelConfig::from_toml_file(&path).unwrap();
    assert_eq!(config.encryption.keys[0].key_file, r.join("k1.key"));
    assert_eq!(config.encryption.algorithm, AlgorithmChoice::Aes256Gcm);
    put_all(config.clone(), &events("t", 3));
    assert!(!found_in_files(r, b"t-event-0001"));
    assert_eq!(take_all(config), events("t", 3));
    // A misspelt setting in the section is refused.
    let bad = text.replace("active_key", "activeKey");
    let err = FileChannelConfig::from_toml_str(&bad, r)
        .unwrap_err()
        .to_string();
    assert!(err.contains("activeKey"), "{err}");
    // So is an algorithm Sluicegate does not have, with the ones it has.
    let bad = text.replace("aes-256-gcm", "aes-128-gcm");
    let err = FileChannelConfig::from_toml_str(&bad, r)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("aes-128-gcm") && err.contains("xchacha20-poly1305"),
        "{err}"
    );
}
