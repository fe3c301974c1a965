//! The TOML configs a user or a checkpoint folder hands the binary: byte 0 picks node, rig,
//! model, task or zenoh session config, the rest is the text (invalid UTF-8 replaced). Each
//! parser returns a config or an error naming the problem, never panics; a node config that
//! parses also validates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&pick, rest)) = input.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 5 {
        0 => {
            let _ = edgevla::node::NodeConfig::from_toml(&text);
        }
        1 => {
            let _ = vision::Rig::from_toml_str(&text);
        }
        2 => {
            if let Ok(config) = runtime::model::VlaConfig::from_toml(&text) {
                let _ = config.kv_layout();
                let _ = config.tokens_per_step();
            }
        }
        3 => {
            if let Ok(task) = sim::TaskConfig::from_toml(&text) {
                let _ = task.validate();
            }
        }
        _ => {
            if let Ok(session) = toml::from_str::<transport::session::SessionConfig>(&text) {
                let _ = session.validate();
            }
        }
    }
});
