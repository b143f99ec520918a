//! Dynamic plugins loaded by a running berthd: the example `.so`, and one built with a wrong ABI string.

use berth_integration::{Berthd, BerthdOptions, built, ok_stdout};

fn example_plugin() -> std::path::PathBuf {
    built("libberth_example_plugin.so")
}

/// A copy of the example plugin whose ABI string says version 9: what a plugin built for another berth is.
fn wrong_abi_plugin(dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(example_plugin()).unwrap();
    let needle = b"berth-plugin-abi/1 ";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("ABI string in the .so");
    bytes[at + needle.len() - 2] = b'9';
    let path = dir.join("libwrong_abi.so");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn info(b: &Berthd) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(&b.crictl(&["info"]), "crictl info")).unwrap()
}

#[test]
fn a_loaded_plugin_shows_in_status_and_can_be_selected() {
    let so = example_plugin();
    let b = Berthd::start(BerthdOptions {
        config: format!(
            "[plugins]\nload = [\"{}\"]\nnetwork = \"example-null\"\n[plugins.config.example-null]\ngreeting = \"hello from the .so\"\n",
            so.display()
        ),
        ..Default::default()
    })
    .unwrap();
    let info = info(&b);
    let plugins = info["plugins"]["inventory"].as_array().expect("plugins inventory");
    let ours = plugins
        .iter()
        .find(|p| p["name"] == "example-null")
        .expect("example-null listed");
    assert_eq!(ours["kind"], "network");
    assert_eq!(ours["source"], so.display().to_string());
    assert_eq!(ours["selected"], true);
    assert!(ours["abi"].as_str().unwrap().starts_with("berth-plugin-abi/1"));
    // NetworkReady comes from the plugin through the C ABI, with its configured message.
    let net = info["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "NetworkReady")
        .cloned();
    let net = net.expect("NetworkReady");
    assert_eq!(net["status"], true);
    assert_eq!(net["message"], "hello from the .so");
    // The plugin's log records reach berthd's log.
    assert!(
        b.log_text().contains("example-null initialised: hello from the .so"),
        "{}",
        b.log_text()
    );
}

#[test]
fn a_wrong_abi_is_refused_naming_both_and_berthd_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bad = wrong_abi_plugin(dir.path());
    let b = Berthd::start(BerthdOptions {
        config: format!("[plugins]\nload = [\"{}\"]\n", bad.display()),
        ..Default::default()
    })
    .unwrap();
    let info = info(&b);
    let failures = info["plugins"]["loadFailures"].as_array().expect("failures listed");
    let err = failures[0]["error"].as_str().unwrap();
    assert!(err.contains("built for ABI `berth-plugin-abi/9"), "{err}");
    assert!(err.contains("this berthd speaks `berth-plugin-abi/1"), "{err}");
    assert!(
        !info["plugins"]["inventory"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "example-null")
    );
}

#[test]
fn selecting_a_plugin_that_failed_to_load_fails_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = wrong_abi_plugin(dir.path());
    let mut b = Berthd::spawn(BerthdOptions {
        config: format!(
            "[plugins]\nload = [\"{}\"]\nnetwork = \"example-null\"\n",
            bad.display()
        ),
        ..Default::default()
    })
    .unwrap();
    let status = b.child.take().unwrap().wait().unwrap();
    assert!(!status.success());
    let log = b.log_text();
    assert!(log.contains("unknown network plugin \"example-null\""), "{log}");
    assert!(log.contains("berth-plugin-abi/9"), "{log}");
}

#[test]
fn missing_non_elf_and_symbol_less_files_each_get_their_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("libtext.so");
    std::fs::write(&text, "not a library").unwrap();
    let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap();
    let b = Berthd::start(BerthdOptions {
        config: format!(
            "[plugins]\nload = [\"{}/missing.so\", \"{}\", \"{}\"]\n",
            dir.path().display(),
            text.display(),
            libm
        ),
        ..Default::default()
    })
    .unwrap();
    let info = info(&b);
    let errors: Vec<&str> = info["plugins"]["loadFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains("no such file"), "{}", errors[0]);
    assert!(errors[1].contains("not an ELF shared object"), "{}", errors[1]);
    assert!(
        errors[2].contains("does not export `berth_plugin_descriptor`"),
        "{}",
        errors[2]
    );
}
