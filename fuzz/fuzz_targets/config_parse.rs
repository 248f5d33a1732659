//! The config parser must never panic, whatever the bytes, and every
//! diagnostic it returns must point inside the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machinery::config::MachineConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(diags) = MachineConfig::parse("fuzz.toml", text) {
        let lines = text.lines().count().max(1) + 1;
        for d in diags.0 {
            assert!(d.line >= 1 && d.line <= lines, "{d} is outside a {lines}-line document");
            assert!(d.column >= 1);
        }
    }
});
