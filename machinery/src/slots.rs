//! The A/B slot state machine, and how each boot loader stores it.
//!
//! A node's boot state is, per slot: its **rank** (the boot loader tries the
//! higher one first) and its **status** — no boot entry, committed, or on
//! trial with the boot loader's tries left and done. Every change is
//! computed on a [`BootState`] in memory; a back-end then writes it in one
//! step:
//!
//! - **systemd-boot** ([`sdboot`]): the state *is* the UKI file names in
//!   `/EFI/Linux`: `plinth-<rank>-<slot>[+<left>[-<done>]].efi`. systemd-boot
//!   sorts entries with no tries left last, then by id, newest first, so the
//!   rank decides between good entries; it counts a try down by renaming the
//!   file before it boots it, and the OS commits by renaming it without the
//!   counter. The UKIs' os-release carries no version, so nothing but the
//!   rank and the counter orders them.
//! - **Raspberry Pi firmware** ([`rpi`]): `autoboot.txt` with
//!   `tryboot_a_b=1`: `boot_partition` is the committed slot, the
//!   `[tryboot]` section the slot to try; the trial itself is one-shot
//!   (`reboot "0 tryboot"`), so a failed trial falls back by itself.

use crate::layout::Slot;

/// A slot's boot entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No boot entry: never written, or being rewritten.
    Empty,
    /// Good: booted and committed (or written by image-builder).
    Committed,
    /// On trial: the boot loader boots it while `left > 0`.
    Trial { left: u32, done: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotBoot {
    /// 2 = preferred, 1 = fallback.
    pub rank: u8,
    pub status: Status,
}

/// Both slots' boot entries (index 0 is A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    pub slots: [SlotBoot; 2],
}

/// What a slot is, seen from the slot that booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Empty,
    Committed,
    /// Armed: the next boot tries it.
    TrialPending,
    /// Booted on trial: commit once healthy.
    TrialBooted,
    /// Its trial ran out of tries: the boot loader skips it.
    Failed,
}

impl View {
    pub fn name(self) -> &'static str {
        match self {
            View::Empty => "empty",
            View::Committed => "committed",
            View::TrialPending => "trial pending",
            View::TrialBooted => "on trial",
            View::Failed => "failed",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("slot {0} has no committed boot entry to roll back to ({1})")]
    NothingToRollBackTo(&'static str, &'static str),
    #[error("slot {0} is the one running: an upgrade writes the other slot")]
    Running(&'static str),
}

fn idx(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl BootState {
    /// A fresh image: A preferred, both committed (the same root).
    pub fn fresh() -> BootState {
        BootState {
            slots: [SlotBoot { rank: 2, status: Status::Committed }, SlotBoot { rank: 1, status: Status::Committed }],
        }
    }

    pub fn get(&self, slot: Slot) -> SlotBoot {
        self.slots[idx(slot)]
    }

    fn set(&mut self, slot: Slot, s: SlotBoot) {
        self.slots[idx(slot)] = s;
    }

    /// The slot the boot loader picks next: entries with tries left (or
    /// committed) before the rest, then the higher rank; B wins a tie
    /// (systemd-boot's id order, newest first).
    pub fn next_boot(&self) -> Option<Slot> {
        let bootable = |s: SlotBoot| match s.status {
            Status::Empty => None,
            Status::Committed => Some(true),
            Status::Trial { left, .. } => Some(left > 0),
        };
        [Slot::B, Slot::A]
            .into_iter()
            .filter_map(|slot| bootable(self.get(slot)).map(|good| (good, self.get(slot).rank, slot)))
            .max_by_key(|&(good, rank, slot)| (good, rank, slot == Slot::B))
            .map(|(_, _, slot)| slot)
    }

    /// What the boot loader does at power-on: pick the slot to boot and,
    /// if it is on trial, count one try. `None` when nothing is bootable.
    pub fn power_on(&mut self) -> Option<Slot> {
        let slot = self.next_boot()?;
        if let Status::Trial { left, done } = self.get(slot).status {
            let counted = Status::Trial { left: left.saturating_sub(1), done: done + 1 };
            self.set(slot, SlotBoot { status: counted, ..self.get(slot) });
        }
        Some(slot)
    }

    /// How `slot` looks from the `booted` one.
    pub fn view(&self, slot: Slot, booted: Slot) -> View {
        match self.get(slot).status {
            Status::Empty => View::Empty,
            Status::Committed => View::Committed,
            Status::Trial { .. } if slot == booted => View::TrialBooted,
            Status::Trial { left: 0, .. } => View::Failed,
            Status::Trial { .. } => View::TrialPending,
        }
    }

    /// Before an upgrade writes `target`: its entry goes first, so a power
    /// cut during the write leaves nothing that boots half a slot.
    pub fn clear(&mut self, target: Slot, booted: Slot) -> Result<(), SlotError> {
        if target == booted {
            return Err(SlotError::Running(target.name()));
        }
        self.set(target, SlotBoot { rank: 1, status: Status::Empty });
        let b = self.get(booted);
        self.set(booted, SlotBoot { rank: 2, ..b });
        Ok(())
    }

    /// Once `target` is written and verified: try it once at the next boot,
    /// and fall back to the other slot if that boot does not commit it.
    pub fn arm_trial(&mut self, target: Slot, tries: u32) {
        self.set(target, SlotBoot { rank: 2, status: Status::Trial { left: tries, done: 0 } });
        let o = self.get(target.other());
        self.set(target.other(), SlotBoot { rank: 1, ..o });
    }

    /// The booted slot passed its health checks.
    pub fn commit(&mut self, booted: Slot) {
        self.set(booted, SlotBoot { rank: 2, status: Status::Committed });
        let o = self.get(booted.other());
        self.set(booted.other(), SlotBoot { rank: 1, ..o });
    }

    /// Go back to the other slot on purpose: it must be committed.
    pub fn rollback(&mut self, booted: Slot) -> Result<Slot, SlotError> {
        let target = booted.other();
        match self.view(target, booted) {
            View::Committed => {}
            v => return Err(SlotError::NothingToRollBackTo(target.name(), v.name())),
        }
        self.set(target, SlotBoot { rank: 2, status: Status::Committed });
        let b = self.get(booted);
        self.set(booted, SlotBoot { rank: 1, ..b });
        Ok(target)
    }
}

/// systemd-boot boot counting: the state as UKI file names.
pub mod sdboot {
    use super::{BootState, SlotBoot, Status, idx};
    use crate::layout::Slot;

    /// The file name of a slot's UKI, or `None` for an empty slot.
    pub fn file_name(slot: Slot, s: SlotBoot) -> Option<String> {
        let counter = match s.status {
            Status::Empty => return None,
            Status::Committed => String::new(),
            Status::Trial { left, done: 0 } => format!("+{left}"),
            Status::Trial { left, done } => format!("+{left}-{done}"),
        };
        Some(format!("plinth-{}-{}{counter}.efi", s.rank, slot.name()))
    }

    /// Parses one UKI file name (case-insensitive, as FAT is).
    pub fn parse_name(name: &str) -> Option<(Slot, SlotBoot)> {
        let lower = name.to_ascii_lowercase();
        let stem = lower.strip_prefix("plinth-")?.strip_suffix(".efi")?;
        let (base, counter) = match stem.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (stem, None),
        };
        let (rank, slot) = base.split_once('-')?;
        let rank: u8 = rank.parse().ok().filter(|r| (1..=9).contains(r))?;
        let slot = match slot {
            "a" => Slot::A,
            "b" => Slot::B,
            _ => return None,
        };
        let status = match counter {
            None => Status::Committed,
            Some(c) => {
                let (left, done) = c.split_once('-').unwrap_or((c, "0"));
                Status::Trial { left: left.parse().ok()?, done: done.parse().ok()? }
            }
        };
        Some((slot, SlotBoot { rank, status }))
    }

    /// The state from the names in `/EFI/Linux`; other files are ignored.
    /// Where a slot has two entries (a crash between two renames) the
    /// higher rank counts.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> BootState {
        let empty = SlotBoot { rank: 1, status: Status::Empty };
        let mut state = BootState { slots: [empty, empty] };
        for (slot, s) in names.into_iter().filter_map(parse_name) {
            let cur = &mut state.slots[idx(slot)];
            if cur.status == Status::Empty || s.rank > cur.rank {
                *cur = s;
            }
        }
        state
    }

    /// One step of writing a new state over an old one.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Step {
        Remove(String),
        Rename { from: String, to: String },
    }

    /// The renames that turn `old` into `new`, demotions first so that at
    /// every point in between the boot loader still picks a good entry.
    /// A slot going from empty to an entry is the caller's to write (it
    /// needs the UKI's bytes): its name is [`file_name`] of the new state.
    pub fn steps(old: &BootState, new: &BootState) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut order = [Slot::A, Slot::B];
        // Lower the rank of the slot that loses it before raising the other.
        order.sort_by_key(|s| new.get(*s).rank);
        for slot in order {
            let (from, to) = (file_name(slot, old.get(slot)), file_name(slot, new.get(slot)));
            match (from, to) {
                (Some(from), None) => steps.push(Step::Remove(from)),
                (Some(from), Some(to)) if from != to => steps.push(Step::Rename { from, to }),
                _ => {}
            }
        }
        steps
    }
}

/// The Raspberry Pi firmware's `autoboot.txt` (tryboot A/B).
pub mod rpi {
    use super::{BootState, SlotBoot, Status};
    use crate::layout::Slot;

    /// The reboot argument that makes the next boot a one-shot trial.
    pub const TRYBOOT_REBOOT_ARG: &str = "0 tryboot";

    /// `autoboot.txt` for a state; `parts` are the boot partition numbers
    /// of slots A and B. The committed, preferred slot is `boot_partition`;
    /// a slot on trial goes in `[tryboot]` (the firmware reads that section
    /// only on a tryboot reboot, once).
    pub fn autoboot_txt(state: &BootState, booted: Slot, parts: (u32, u32)) -> String {
        let part = |s: Slot| if s == Slot::A { parts.0 } else { parts.1 };
        let trial = [Slot::A, Slot::B]
            .into_iter()
            .find(|&s| matches!(state.get(s).status, Status::Trial { left, .. } if left > 0 || s == booted));
        let committed = [Slot::A, Slot::B]
            .into_iter()
            .filter(|&s| state.get(s).status == Status::Committed)
            .max_by_key(|&s| state.get(s).rank)
            .unwrap_or(booted);
        let tryboot = trial.unwrap_or(committed);
        format!(
            "[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            part(committed),
            part(tryboot)
        )
    }

    /// Reads `autoboot.txt` back: the committed slot and the slot to try.
    pub fn parse(text: &str, parts: (u32, u32)) -> Option<(Slot, Slot)> {
        let slot = |n: u32| match n {
            n if n == parts.0 => Some(Slot::A),
            n if n == parts.1 => Some(Slot::B),
            _ => None,
        };
        let mut section = String::new();
        let (mut all, mut tryboot) = (None, None);
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some(v) = line.strip_prefix("boot_partition=") {
                let n = slot(v.trim().parse().ok()?)?;
                match section.as_str() {
                    "tryboot" => tryboot = Some(n),
                    _ => all = Some(n),
                }
            }
        }
        let all = all?;
        Some((all, tryboot.unwrap_or(all)))
    }

    /// The state the firmware's files describe, seen from the booted slot.
    pub fn state(committed: Slot, trial: Slot, booted: Slot) -> BootState {
        let mut s = BootState {
            slots: [SlotBoot { rank: 1, status: Status::Committed }, SlotBoot { rank: 1, status: Status::Committed }],
        };
        s.slots[super::idx(committed)].rank = 2;
        if trial != committed {
            // A one-shot trial: pending until booted, then counted.
            let left = u32::from(trial != booted);
            s.slots[super::idx(trial)] = SlotBoot { rank: 2, status: Status::Trial { left, done: 1 - left } };
            s.slots[super::idx(committed)].rank = 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::sdboot::{self, Step};
    use super::*;

    fn boot(state: &mut BootState) -> Slot {
        state.power_on().expect("something boots")
    }

    #[test]
    fn upgrade_commit_and_fallback() {
        let mut s = BootState::fresh();
        assert_eq!(boot(&mut s), Slot::A);
        // Upgrade B: cleared, written, armed.
        s.clear(Slot::B, Slot::A).unwrap();
        assert_eq!(s.next_boot(), Some(Slot::A), "a power cut while writing B boots A");
        s.arm_trial(Slot::B, 1);
        assert_eq!(s.view(Slot::B, Slot::A), View::TrialPending);
        // The trial boot: healthy, committed.
        let mut good = s;
        assert_eq!(boot(&mut good), Slot::B);
        assert_eq!(good.view(Slot::B, Slot::B), View::TrialBooted);
        good.commit(Slot::B);
        assert_eq!(good.view(Slot::B, Slot::B), View::Committed);
        assert_eq!(boot(&mut good), Slot::B, "B stays");
        // The trial boot fails (panic, hang, crash loop: a reboot without commit).
        let mut bad = s;
        assert_eq!(boot(&mut bad), Slot::B);
        assert_eq!(boot(&mut bad), Slot::A, "no tries left: back on A");
        assert_eq!(bad.view(Slot::B, Slot::A), View::Failed);
        assert_eq!(boot(&mut bad), Slot::A, "and it stays there");
        assert!(matches!(bad.rollback(Slot::A), Err(SlotError::NothingToRollBackTo("b", "failed"))));
        // Rollback from a committed B to A.
        assert_eq!(good.rollback(Slot::B), Ok(Slot::A));
        assert_eq!(boot(&mut good), Slot::A);
        assert_eq!(s.clone().clear(Slot::A, Slot::A), Err(SlotError::Running("a")));
    }

    #[test]
    fn sdboot_names_round_trip() {
        let cases = [
            (Slot::A, SlotBoot { rank: 2, status: Status::Committed }, "plinth-2-a.efi"),
            (Slot::B, SlotBoot { rank: 2, status: Status::Trial { left: 1, done: 0 } }, "plinth-2-b+1.efi"),
            (Slot::B, SlotBoot { rank: 2, status: Status::Trial { left: 0, done: 1 } }, "plinth-2-b+0-1.efi"),
        ];
        for (slot, s, name) in cases {
            assert_eq!(sdboot::file_name(slot, s).as_deref(), Some(name));
            assert_eq!(sdboot::parse_name(name), Some((slot, s)));
            assert_eq!(sdboot::parse_name(&name.to_uppercase()), Some((slot, s)), "FAT is case-insensitive");
        }
        for junk in ["plinth-a.efi", "plinth-2-c.efi", "plinth-2-a+x.efi", "other.efi", "plinth-2-a.efi.tmp"] {
            assert_eq!(sdboot::parse_name(junk), None, "{junk}");
        }
        let s = sdboot::from_names(["plinth-1-a.efi", "plinth-2-b+0-1.efi", "README"]);
        assert_eq!(s.view(Slot::B, Slot::A), View::Failed);
        assert_eq!(s.next_boot(), Some(Slot::A));
        assert_eq!(sdboot::from_names([]).next_boot(), None);
    }

    #[test]
    fn sdboot_steps_demote_before_they_promote() {
        let mut old = BootState::fresh();
        old.clear(Slot::B, Slot::A).unwrap();
        assert_eq!(sdboot::steps(&BootState::fresh(), &old), [Step::Remove("plinth-1-b.efi".into())]);
        let mut armed = old;
        armed.arm_trial(Slot::B, 1);
        // A is demoted first; B is new (the caller writes it under its name).
        assert_eq!(
            sdboot::steps(&old, &armed),
            [Step::Rename { from: "plinth-2-a.efi".into(), to: "plinth-1-a.efi".into() }]
        );
        assert_eq!(sdboot::file_name(Slot::B, armed.get(Slot::B)).unwrap(), "plinth-2-b+1.efi");
        // Every intermediate state boots a good slot.
        let mut mid = old;
        mid.set(Slot::A, SlotBoot { rank: 1, ..mid.get(Slot::A) });
        assert_eq!(mid.next_boot(), Some(Slot::A));
        // Commit after the trial boot renamed B to +0-1.
        let booted = sdboot::from_names(["plinth-1-a.efi", "plinth-2-b+0-1.efi"]);
        let mut done = booted;
        done.commit(Slot::B);
        assert_eq!(
            sdboot::steps(&booted, &done),
            [Step::Rename { from: "plinth-2-b+0-1.efi".into(), to: "plinth-2-b.efi".into() }]
        );
        // Rollback: B demoted, then A promoted.
        let mut rb = done;
        rb.rollback(Slot::B).unwrap();
        assert_eq!(
            sdboot::steps(&done, &rb),
            [
                Step::Rename { from: "plinth-2-b.efi".into(), to: "plinth-1-b.efi".into() },
                Step::Rename { from: "plinth-1-a.efi".into(), to: "plinth-2-a.efi".into() },
            ]
        );
    }

    #[test]
    fn rpi_autoboot_bytes() {
        let parts = (2, 3);
        let fresh = BootState::fresh();
        assert_eq!(
            rpi::autoboot_txt(&fresh, Slot::A, parts),
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n"
        );
        let mut armed = fresh;
        armed.clear(Slot::B, Slot::A).unwrap();
        armed.arm_trial(Slot::B, 1);
        let text = rpi::autoboot_txt(&armed, Slot::A, parts);
        assert_eq!(text, "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n");
        assert_eq!(rpi::parse(&text, parts), Some((Slot::A, Slot::B)));
        // Booted on trial (the firmware was told "0 tryboot"): B on trial.
        let (committed, trial) = rpi::parse(&text, parts).unwrap();
        let on_trial = rpi::state(committed, trial, Slot::B);
        assert_eq!(on_trial.view(Slot::B, Slot::B), View::TrialBooted);
        let mut done = on_trial;
        done.commit(Slot::B);
        assert_eq!(
            rpi::autoboot_txt(&done, Slot::B, parts),
            "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=3\n"
        );
        // The trial boot failed: the firmware booted A, B shows as failed.
        let failed = rpi::state(committed, trial, Slot::A);
        assert_eq!(failed.view(Slot::B, Slot::A), View::TrialPending, "armed until a tryboot reboot");
        assert_eq!(rpi::parse("[all]\nboot_partition=9\n", parts), None);
        assert_eq!(rpi::parse("[all]\nboot_partition=3\n", parts), Some((Slot::B, Slot::B)));
    }
}
