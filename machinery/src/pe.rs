//! A small reader of PE (Portable Executable) section tables: enough to
//! place sections in a Unified Kernel Image, to read them back, and to set
//! the slot in a UKI's command line when an upgrade writes it to a slot.

use crate::layout::{CMDLINE_SLOT, Slot};

/// One section of a PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Relative virtual address.
    pub vma: u64,
    /// Size in memory.
    pub size: u64,
    /// Where its bytes are in the file, and how many.
    pub file_offset: u64,
    pub file_size: u64,
}

/// A parsed PE (32 or 32+) image: its size in memory and its sections.
#[derive(Debug, Clone)]
pub struct Pe {
    pub size_of_image: u64,
    pub sections: Vec<Section>,
}

impl Pe {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The bytes of a section.
    pub fn data<'a>(&self, image: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let s = self.section(name)?;
        // In the file a section is padded to the file alignment; the
        // virtual size is what was added.
        let len = s.size.min(s.file_size) as usize;
        image.get(s.file_offset as usize..s.file_offset as usize + len)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Where a PE image's `PE\0\0` signature is (the DOS header's
/// `e_lfanew`); `None` if it is not a PE image.
fn pe_signature(image: &[u8]) -> Option<usize> {
    if image.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(image, 0x3c)? as usize;
    (image.get(pe..pe + 4)? == b"PE\0\0").then_some(pe)
}

/// Sets a PE image's COFF TimeDateStamp to `time` and recomputes its
/// optional header's CheckSum (which covers it); `None` if it is not a PE
/// image. objcopy (binutils 2.40) stamps what it writes with the time it
/// ran, whatever `SOURCE_DATE_EPOCH` says, so two builds of one UKI
/// differed in these eight bytes alone.
pub fn set_timestamp(image: &mut [u8], time: u32) -> Option<()> {
    let pe = pe_signature(image)?;
    let stamp = pe + 8;
    image.get_mut(stamp..stamp + 4)?.copy_from_slice(&time.to_le_bytes());
    // CheckSum is at the same offset in PE32 and PE32+.
    let sum_at = pe + 24 + 64;
    image.get_mut(sum_at..sum_at + 4)?.copy_from_slice(&[0; 4]);
    let sum = checksum(image, sum_at);
    image[sum_at..sum_at + 4].copy_from_slice(&sum.to_le_bytes());
    Some(())
}

/// The PE checksum: the image's 16-bit little-endian words added with
/// end-around carry (the CheckSum field at `sum_at` counted as zero), plus
/// the image's length.
fn checksum(image: &[u8], sum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, w) in image.chunks(2).enumerate() {
        let at = i * 2;
        if at >= sum_at && at < sum_at + 4 {
            continue;
        }
        sum += u64::from(u16::from_le_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}

/// Reads the section table of a PE image; `None` if it is not one.
pub fn parse_pe(image: &[u8]) -> Option<Pe> {
    let pe = pe_signature(image)?;
    let coff = pe + 4;
    let nsections = u16_at(image, coff + 2)? as usize;
    let opt_size = u16_at(image, coff + 16)? as usize;
    let opt = coff + 20;
    // SizeOfImage is at the same offset in PE32 and PE32+.
    let size_of_image = u32_at(image, opt + 56)? as u64;
    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let h = table + i * 40;
        let raw = image.get(h..h + 8)?;
        let name = String::from_utf8_lossy(raw).trim_end_matches('\0').to_string();
        sections.push(Section {
            name,
            size: u32_at(image, h + 8)? as u64,
            vma: u32_at(image, h + 12)? as u64,
            file_size: u32_at(image, h + 16)? as u64,
            file_offset: u32_at(image, h + 20)? as u64,
        });
    }
    Some(Pe { size_of_image, sections })
}

/// Sets the slot a UKI boots (`plinth.slot=` in its `.cmdline` section), in
/// place: an upgrade bundle carries one UKI and the node writes it to
/// either slot. Both values are one byte, so the image keeps its layout.
/// A UKI whose command line names no slot is left as it is: a Secure Boot
/// signed one, whose signature covers every byte, boots either slot (init
/// reads the slot from the boot loader's entry).
pub fn set_uki_slot(image: &mut [u8], slot: Slot) -> Result<(), &'static str> {
    let pe = parse_pe(image).ok_or("not a PE image")?;
    let s = pe.section(".cmdline").ok_or("the UKI has no .cmdline section")?;
    let start = s.file_offset as usize;
    let len = s.size.min(s.file_size) as usize;
    let cmdline = image.get_mut(start..start + len).ok_or("the .cmdline section lies outside the file")?;
    let key = CMDLINE_SLOT.as_bytes();
    let Some(at) = cmdline.windows(key.len()).position(|w| w == key) else { return Ok(()) };
    let value = cmdline.get_mut(at + key.len()).ok_or("the UKI's command line ends after plinth.slot=")?;
    if !matches!(*value, b'a' | b'b') {
        return Err("the UKI's command line names an unknown slot");
    }
    *value = slot.name().as_bytes()[0];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_set_twice_gives_the_same_bytes_and_a_valid_checksum() {
        // A minimal PE: MZ, e_lfanew = 0x40, "PE\0\0", a COFF header and
        // an optional header long enough to hold CheckSum.
        let mut image = vec![0u8; 0x40 + 4 + 20 + 96 + 3];
        image[..2].copy_from_slice(b"MZ");
        image[0x3c] = 0x40;
        image[0x40..0x44].copy_from_slice(b"PE\0\0");
        image[0x48..0x4c].copy_from_slice(&0x6000_0000u32.to_le_bytes());
        let mut other = image.clone();
        other[0x48..0x4c].copy_from_slice(&0x6000_0042u32.to_le_bytes());
        set_timestamp(&mut image, 1_700_000_000).unwrap();
        set_timestamp(&mut other, 1_700_000_000).unwrap();
        assert_eq!(image, other, "only the stamp differed");
        assert_eq!(u32_at(&image, 0x48), Some(1_700_000_000));
        let sum_at = 0x40 + 24 + 64;
        let stored = u32_at(&image, sum_at).unwrap();
        assert_eq!(stored, checksum(&image, sum_at), "the stored sum is the image's");
        assert_ne!(stored, 0);
        assert!(set_timestamp(&mut b"not a PE image".to_vec(), 1).is_none());
    }

    #[test]
    fn parse_pe_refuses_what_is_not_pe() {
        assert!(parse_pe(b"").is_none());
        assert!(parse_pe(b"MZ").is_none());
        assert!(parse_pe(&[b'M', b'Z', 0, 0, 0, 0, 0, 0]).is_none());
    }

    /// A minimal PE32+ with one `.cmdline` section.
    fn tiny_pe(cmdline: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&0xf0u16.to_le_bytes());
        let opt = coff + 20;
        b[opt + 56..opt + 60].copy_from_slice(&0x2000u32.to_le_bytes());
        let h = opt + 0xf0;
        b[h..h + 8].copy_from_slice(b".cmdline");
        b[h + 8..h + 12].copy_from_slice(&(cmdline.len() as u32).to_le_bytes());
        b[h + 12..h + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        b[h + 16..h + 20].copy_from_slice(&0x200u32.to_le_bytes());
        b[h + 20..h + 24].copy_from_slice(&0x200u32.to_le_bytes());
        b.resize(0x400, 0);
        b[0x200..0x200 + cmdline.len()].copy_from_slice(cmdline);
        b
    }

    #[test]
    fn set_uki_slot_rewrites_one_byte_of_the_cmdline() {
        let mut img = tiny_pe(b"console=ttyS0 plinth.slot=a panic=10");
        let before = img.clone();
        set_uki_slot(&mut img, Slot::B).unwrap();
        let pe = parse_pe(&img).unwrap();
        assert_eq!(pe.data(&img, ".cmdline").unwrap(), b"console=ttyS0 plinth.slot=b panic=10");
        assert_eq!(img.iter().zip(&before).filter(|(a, b)| a != b).count(), 1);
        assert_eq!(Slot::from_cmdline(std::str::from_utf8(pe.data(&img, ".cmdline").unwrap()).unwrap()), Some(Slot::B));
        let mut no_slot = tiny_pe(b"console=ttyS0");
        let before = no_slot.clone();
        set_uki_slot(&mut no_slot, Slot::B).unwrap();
        assert_eq!(no_slot, before, "a UKI naming no slot (signed) is left as it is");
        let mut odd = tiny_pe(b"plinth.slot=z");
        assert!(set_uki_slot(&mut odd, Slot::A).is_err());
        assert!(set_uki_slot(&mut [0u8; 10], Slot::A).is_err());
    }
}
