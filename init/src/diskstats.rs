//! Bytes written to each block device since boot, from /proc/diskstats
//! (the write budget's disk-level figure, `Version`'s `disks`).

use machinery::api::DiskWrites;

/// The devices of a /proc/diskstats text with something written, loop and
/// RAM devices left out; sectors are 512 bytes whatever the device's block
/// size (the kernel counts them so).
pub fn parse(text: &str) -> Vec<DiskWrites> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (device, sectors) = (*f.get(2)?, f.get(9)?.parse::<u64>().ok()?);
            let virtual_device = ["loop", "ram", "zram"].iter().any(|p| device.starts_with(p));
            (!virtual_device && sectors > 0)
                .then(|| DiskWrites { device: device.to_string(), written_bytes: sectors * 512 })
        })
        .collect()
}

/// This machine's figures (none when /proc/diskstats cannot be read).
pub fn read() -> Vec<DiskWrites> {
    match std::fs::read_to_string("/proc/diskstats") {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!("read /proc/diskstats: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_written_per_device() {
        let text = "\
 254       0 vda 1520 0 98234 812 361 254 18250 402 0 1130 1271 0 0 0 0 61 56
 254       5 vda5 230 0 10318 101 300 250 16402 380 0 390 481 0 0 0 0 0 0
   7       0 loop0 55 0 2232 14 0 0 0 0 0 28 14 0 0 0 0 0 0
   1       0 ram0 0 0 0 0 9 0 8 0 0 0 0 0 0 0 0 0 0
 254      16 vdb 80 0 2000 10 0 0 0 0 0 10 10
";
        let got: Vec<(String, u64)> = parse(text).into_iter().map(|d| (d.device, d.written_bytes)).collect();
        assert_eq!(got, [("vda".to_string(), 18250 * 512), ("vda5".to_string(), 16402 * 512)]);
        assert!(parse("garbage\n1 2\n").is_empty());
    }
}
