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
//!   (`reboot "0 tryboot"`), so a failed trial falls back by itself. The
//!   firmware counts nothing: a record on STATE counts the tries, and its
//!   own state machine ([`rpi::PiState`]) orders the writes.

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
    #[error("slot {0} is on trial: let it be committed (or roll back) before the next upgrade")]
    OnTrial(&'static str),
    #[error("slot {0} is not on trial: nothing to commit")]
    NotOnTrial(&'static str),
    #[error("slot {0} was not cleared for writing: it cannot be armed")]
    NotCleared(&'static str),
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

/// The Raspberry Pi firmware's tryboot A/B.
///
/// Three things hold the state:
/// - `autoboot.txt` on the `BOOT` partition ([`Autoboot`]): `[all]
///   boot_partition` is the committed slot, `[tryboot] boot_partition` the
///   slot the firmware boots when the previous reboot asked for a trial
///   (`reboot "0 tryboot"`). It is always [`AUTOBOOT_LEN`] bytes, so a
///   node rewrites it in place, one sector, never its directory entry; and
///   every write changes one byte of it.
/// - the firmware's tryboot flag: one-shot, set by the reboot, gone after
///   the next boot or a power cut;
/// - a record on STATE ([`Record`]) of the slot that is not committed:
///   being written, on trial with tries left and done, or failed. The
///   firmware leaves no trace of a trial, so only this record tells a
///   trial that was cut off (power, crash, watchdog) from one not yet
///   launched, and lets the node launch it again until its tries are spent.
///
/// A try is counted on STATE *before* the reboot that launches it, so a
/// trial boot that dies at any point has been counted (none is lost) and
/// counted once; a power cut between the count and the reboot spends a try
/// without a boot (the safe way to err).
pub mod rpi {
    use super::{BootState, SlotBoot, SlotError, Status};
    use crate::layout::Slot;

    /// The reboot argument that makes the next boot a one-shot trial.
    pub const TRYBOOT_REBOOT_ARG: &str = "0 tryboot";
    /// The size of `autoboot.txt`: one sector.
    pub const AUTOBOOT_LEN: usize = 512;
    /// Trial boots a new slot gets: a power cut during one is retried.
    pub const TRIAL_TRIES: u32 = 3;

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum RpiError {
        #[error("autoboot.txt: {0}")]
        Autoboot(String),
        #[error("the trial record {0:?} is not one this node writes")]
        Record(String),
    }

    /// `autoboot.txt`: the committed slot and the slot a tryboot boots.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Autoboot {
        pub committed: Slot,
        pub tryboot: Slot,
    }

    fn part(slot: Slot, parts: (u32, u32)) -> u32 {
        if slot == Slot::A { parts.0 } else { parts.1 }
    }

    impl Autoboot {
        /// Exactly [`AUTOBOOT_LEN`] bytes: the settings, then a comment
        /// padding the sector. `parts` are the boot partition numbers of
        /// slots A and B.
        pub fn encode(&self, parts: (u32, u32)) -> String {
            let mut text = format!(
                "[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n\
                 # Plinth rewrites this file in place: it stays {AUTOBOOT_LEN} bytes.\n",
                part(self.committed, parts),
                part(self.tryboot, parts)
            );
            // Short comment lines: the firmware's config parser has a line limit.
            while text.len() < AUTOBOOT_LEN {
                let n = (AUTOBOOT_LEN - text.len()).min(64);
                if n > 1 {
                    text.push('#');
                    text.extend(std::iter::repeat_n('-', n - 2));
                }
                text.push('\n');
            }
            text
        }

        /// Reads `autoboot.txt` as the firmware does: `boot_partition` in
        /// `[all]` (or before any section), and in `[tryboot]` (the
        /// committed one when absent).
        pub fn parse(bytes: &[u8], parts: (u32, u32)) -> Result<Autoboot, RpiError> {
            let text = std::str::from_utf8(bytes).map_err(|_| RpiError::Autoboot("not text".into()))?;
            let slot = |v: &str| match v.trim().parse::<u32>() {
                Ok(n) if n == parts.0 => Ok(Slot::A),
                Ok(n) if n == parts.1 => Ok(Slot::B),
                _ => Err(RpiError::Autoboot(format!(
                    "boot_partition={} is neither slot's boot partition ({} or {})",
                    v.trim(),
                    parts.0,
                    parts.1
                ))),
            };
            let mut section = "all";
            let (mut all, mut tryboot) = (None, None);
            for line in text.lines().map(str::trim) {
                if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = if s == "tryboot" { "tryboot" } else { "all" };
                } else if let Some(v) = line.strip_prefix("boot_partition=") {
                    let n = slot(v)?;
                    if section == "tryboot" { tryboot = Some(n) } else { all = Some(n) }
                }
            }
            let committed = all.ok_or_else(|| RpiError::Autoboot("no boot_partition in [all]".into()))?;
            Ok(Autoboot { committed, tryboot: tryboot.unwrap_or(committed) })
        }
    }

    /// What `autoboot.txt` says for a [`BootState`]: the committed slot
    /// with the higher rank, and the slot on trial, if any. image-builder
    /// writes a fresh image's with it.
    pub fn autoboot_txt(state: &BootState, booted: Slot, parts: (u32, u32)) -> String {
        let committed = [Slot::A, Slot::B]
            .into_iter()
            .filter(|&s| state.get(s).status == Status::Committed)
            .max_by_key(|&s| state.get(s).rank)
            .unwrap_or(booted);
        let tryboot = [Slot::A, Slot::B]
            .into_iter()
            .find(|&s| s != committed && matches!(state.get(s).status, Status::Trial { .. }))
            .unwrap_or(committed);
        Autoboot { committed, tryboot }.encode(parts)
    }

    /// Reads `autoboot.txt`: the committed slot and the slot to try.
    pub fn parse(text: &str, parts: (u32, u32)) -> Option<(Slot, Slot)> {
        Autoboot::parse(text.as_bytes(), parts).ok().map(|a| (a.committed, a.tryboot))
    }

    /// The slot that is not committed, as STATE remembers it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Other {
        /// Being written, or its write was cut off: never booted.
        Empty,
        /// Armed: `left` more trial boots may be launched, `done` were.
        Trial { left: u32, done: u32 },
        /// Its trial ended without a commit.
        Failed { done: u32 },
    }

    /// The record on STATE; no record means both slots are committed (a
    /// fresh image: both hold the same root).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Record {
        pub slot: Slot,
        pub other: Other,
    }

    impl Record {
        /// One line: `none`, `b empty`, `b trial LEFT DONE`, `b failed DONE`.
        pub fn encode(record: Option<Record>) -> String {
            let Some(r) = record else { return "none\n".into() };
            let s = r.slot.name();
            match r.other {
                Other::Empty => format!("{s} empty\n"),
                Other::Trial { left, done } => format!("{s} trial {left} {done}\n"),
                Other::Failed { done } => format!("{s} failed {done}\n"),
            }
        }

        /// The record's text; an empty text (no file yet) is no record.
        pub fn parse(text: &str) -> Result<Option<Record>, RpiError> {
            let bad = || RpiError::Record(text.trim().chars().take(64).collect());
            let words: Vec<&str> = text.split_whitespace().collect();
            let n = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok()).ok_or_else(bad);
            let slot = match words.first() {
                None | Some(&"none") if words.len() <= 1 => return Ok(None),
                Some(&"a") => Slot::A,
                Some(&"b") => Slot::B,
                _ => return Err(bad()),
            };
            let (other, len) = match words.get(1) {
                Some(&"empty") => (Other::Empty, 2),
                Some(&"trial") => (Other::Trial { left: n(2)?, done: n(3)? }, 4),
                Some(&"failed") => (Other::Failed { done: n(2)? }, 3),
                _ => return Err(bad()),
            };
            if words.len() != len {
                return Err(bad());
            }
            Ok(Some(Record { slot, other }))
        }
    }

    /// One write of a transition, in order; each is durable before the next.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Write {
        Record(Option<Record>),
        Autoboot(Autoboot),
    }

    /// What a boot finds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AtBoot {
        /// A committed boot (a staged trial may wait for the next reboot).
        Committed,
        /// Booted on trial: commit once healthy.
        OnTrial,
        /// A trial boot of `slot` was cut off and tries are left: launch
        /// it again (the reboot is a tryboot).
        Relaunch { slot: Slot, left: u32, done: u32 },
        /// The trial of `slot` has spent its tries: now failed, disarmed.
        TrialFailed { slot: Slot, done: u32 },
        /// The firmware booted a slot neither committed nor on trial: a
        /// plain reboot goes back to the committed one.
        Stray,
    }

    /// How the next reboot must be made.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Reboot {
        Normal,
        /// `reboot(2)` with [`TRYBOOT_REBOOT_ARG`].
        Tryboot,
    }

    /// The whole state: `autoboot.txt` and the record on STATE.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PiState {
        pub autoboot: Autoboot,
        pub record: Option<Record>,
    }

    /// The autoboot writes from `from` to `to`, one field (one byte) at a
    /// time: the tryboot slot first (read only after a tryboot reboot),
    /// then the committed one.
    fn autoboot_steps(from: Autoboot, to: Autoboot) -> Vec<Write> {
        let mut out = Vec::new();
        let mut at = from;
        if at.tryboot != to.tryboot {
            at.tryboot = to.tryboot;
            out.push(Write::Autoboot(at));
        }
        if at.committed != to.committed {
            out.push(Write::Autoboot(to));
        }
        out
    }

    impl PiState {
        /// The slot that is not committed.
        pub fn other_slot(&self) -> Slot {
            self.autoboot.committed.other()
        }

        /// The other slot's record; `None` when it is committed too. A
        /// record naming the committed slot is stale (a commit cut off
        /// before it cleared the record).
        pub fn other(&self) -> Option<Other> {
            self.record.filter(|r| r.slot == self.other_slot()).map(|r| r.other)
        }

        /// Applies one write.
        pub fn apply(&mut self, w: Write) {
            match w {
                Write::Record(r) => self.record = r,
                Write::Autoboot(a) => self.autoboot = a,
            }
        }

        /// Where `[tryboot]` should point: the slot on trial, else the
        /// committed one.
        fn wanted_tryboot(&self) -> Slot {
            match self.other() {
                Some(Other::Trial { .. }) => self.other_slot(),
                _ => self.autoboot.committed,
            }
        }

        /// The write that makes `[tryboot]` agree with the record (a
        /// transition cut off between its writes), if it does not.
        fn reconcile(&self) -> Vec<Write> {
            autoboot_steps(self.autoboot, Autoboot { tryboot: self.wanted_tryboot(), ..self.autoboot })
        }

        /// The generic view (for `version`, and the rank/status rules).
        pub fn boot_state(&self) -> BootState {
            let c = self.autoboot.committed;
            let other = match self.other() {
                None => SlotBoot { rank: 1, status: Status::Committed },
                Some(Other::Empty) => SlotBoot { rank: 1, status: Status::Empty },
                Some(Other::Trial { left, done }) => {
                    SlotBoot { rank: if left > 0 { 2 } else { 1 }, status: Status::Trial { left, done } }
                }
                Some(Other::Failed { done }) => SlotBoot { rank: 1, status: Status::Trial { left: 0, done } },
            };
            let committed = SlotBoot { rank: if other.rank == 2 { 1 } else { 2 }, status: Status::Committed };
            let mut slots = [committed, other];
            if c == Slot::B {
                slots.swap(0, 1);
            }
            BootState { slots }
        }

        /// At boot, once STATE is mounted: what this boot is, and the
        /// writes that finish a transition a power cut interrupted.
        pub fn at_boot(&self, booted: Slot) -> (AtBoot, Vec<Write>) {
            let (c, o) = (self.autoboot.committed, self.other_slot());
            if booted != c {
                return match self.other() {
                    Some(Other::Trial { .. }) => (AtBoot::OnTrial, Vec::new()),
                    _ => (AtBoot::Stray, Vec::new()),
                };
            }
            match self.other() {
                Some(Other::Trial { left: 0, done }) => {
                    let failed = Record { slot: o, other: Other::Failed { done } };
                    let mut w = vec![Write::Record(Some(failed))];
                    w.extend(autoboot_steps(self.autoboot, Autoboot { committed: c, tryboot: c }));
                    (AtBoot::TrialFailed { slot: o, done }, w)
                }
                Some(Other::Trial { left, done }) if done > 0 => {
                    (AtBoot::Relaunch { slot: o, left, done }, self.reconcile())
                }
                _ => (AtBoot::Committed, self.reconcile()),
            }
        }

        /// Before an upgrade writes `target`: STATE marks it empty, then
        /// `[tryboot]` stops naming it. Refused while on trial: the
        /// committed slot is the fallback, and is not overwritten.
        pub fn clear(&self, target: Slot, booted: Slot) -> Result<Vec<Write>, SlotError> {
            if target == booted {
                return Err(SlotError::Running(target.name()));
            }
            let c = self.autoboot.committed;
            if booted != c {
                return Err(SlotError::OnTrial(booted.name()));
            }
            let mut w = Vec::new();
            let empty = Some(Record { slot: target, other: Other::Empty });
            if self.record != empty {
                w.push(Write::Record(empty));
            }
            w.extend(autoboot_steps(self.autoboot, Autoboot { committed: c, tryboot: c }));
            Ok(w)
        }

        /// Once `target` is written and read back: STATE gives it `tries`,
        /// then `[tryboot]` names it. Launched by the next reboot.
        pub fn arm(&self, target: Slot, tries: u32) -> Result<Vec<Write>, SlotError> {
            if self.other_slot() != target || self.other() != Some(Other::Empty) {
                return Err(SlotError::NotCleared(target.name()));
            }
            let trial = Record { slot: target, other: Other::Trial { left: tries.max(1), done: 0 } };
            let mut w = vec![Write::Record(Some(trial))];
            w.extend(autoboot_steps(self.autoboot, Autoboot { tryboot: target, ..self.autoboot }));
            Ok(w)
        }

        /// Before any reboot: a committed boot with a trial armed and tries
        /// left launches it, counting the try first.
        pub fn launch(&self, booted: Slot) -> (Reboot, Vec<Write>) {
            match self.other() {
                Some(Other::Trial { left, done }) if left > 0 && booted == self.autoboot.committed => {
                    let mut w = self.reconcile();
                    let counted = Other::Trial { left: left - 1, done: done + 1 };
                    w.push(Write::Record(Some(Record { slot: self.other_slot(), other: counted })));
                    (Reboot::Tryboot, w)
                }
                _ => (Reboot::Normal, Vec::new()),
            }
        }

        /// The slot on trial is healthy: `[all]` names it (the commit, one
        /// byte), then the record goes; the old slot is the fallback.
        pub fn commit(&self, booted: Slot) -> Result<Vec<Write>, SlotError> {
            if booted == self.autoboot.committed || !matches!(self.other(), Some(Other::Trial { .. })) {
                return Err(SlotError::NotOnTrial(booted.name()));
            }
            let mut w = autoboot_steps(self.autoboot, Autoboot { committed: booted, tryboot: booted });
            w.push(Write::Record(None));
            Ok(w)
        }

        /// The slot on trial did not become healthy: failed now, so the
        /// committed slot's boot does not launch it again.
        pub fn give_up(&self, booted: Slot) -> Vec<Write> {
            match self.other() {
                Some(Other::Trial { done, .. }) if booted == self.other_slot() => {
                    vec![Write::Record(Some(Record { slot: booted, other: Other::Failed { done } }))]
                }
                _ => Vec::new(),
            }
        }

        /// Boot the other, committed slot again: from a committed boot,
        /// `[all]` names the other slot; from a trial, the trial fails (the
        /// plain reboot then boots the committed slot).
        pub fn rollback(&self, booted: Slot) -> Result<(Slot, Vec<Write>), SlotError> {
            let (c, o) = (self.autoboot.committed, self.other_slot());
            if booted == o {
                return match self.other() {
                    Some(Other::Trial { .. }) => Ok((c, self.give_up(booted))),
                    _ => Err(SlotError::NotOnTrial(booted.name())),
                };
            }
            match self.other() {
                None => Ok((o, autoboot_steps(self.autoboot, Autoboot { committed: o, tryboot: o }))),
                Some(_) => {
                    let view = self.boot_state().view(o, booted);
                    Err(SlotError::NothingToRollBackTo(o.name(), view.name()))
                }
            }
        }
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

    mod pi {
        use super::super::rpi::*;
        use super::super::*;

        const PARTS: (u32, u32) = (2, 3);

        /// A Pi as bytes: `autoboot.txt`, the record on STATE, the
        /// firmware's one-shot flag, and whether each slot's partitions
        /// hold a whole, verified image.
        #[derive(Debug, Clone)]
        struct Pi {
            autoboot: Vec<u8>,
            record: String,
            flag: bool,
            whole: [bool; 2],
            /// Boots of the slot on trial, by the firmware.
            trial_boots: u32,
        }

        /// One step of a journey: a durable write, a partition write, or
        /// the tryboot reboot.
        #[derive(Debug, Clone, Copy)]
        enum Step {
            W(Write),
            Partial(Slot),
            Whole(Slot),
            TrybootReboot,
        }

        impl Pi {
            fn fresh() -> Pi {
                Pi {
                    autoboot: autoboot_txt(&BootState::fresh(), Slot::A, PARTS).into_bytes(),
                    record: String::new(),
                    flag: false,
                    whole: [true, true],
                    trial_boots: 0,
                }
            }

            /// What init reads back from the bytes.
            fn state(&self) -> PiState {
                PiState {
                    autoboot: Autoboot::parse(&self.autoboot, PARTS).expect("autoboot.txt always parses"),
                    record: Record::parse(&self.record).expect("the record always parses"),
                }
            }

            fn step(&mut self, s: Step) {
                match s {
                    Step::W(Write::Autoboot(a)) => {
                        let new = a.encode(PARTS).into_bytes();
                        assert_eq!(new.len(), AUTOBOOT_LEN);
                        let changed = new.iter().zip(&self.autoboot).filter(|(x, y)| x != y).count();
                        assert!(changed <= 1, "one autoboot write changes one byte, not {changed}");
                        self.autoboot = new;
                    }
                    Step::W(Write::Record(r)) => self.record = Record::encode(r),
                    Step::Partial(slot) => self.whole[idx(slot)] = false,
                    Step::Whole(slot) => self.whole[idx(slot)] = true,
                    Step::TrybootReboot => self.flag = true,
                }
            }

            fn run(&mut self, steps: &[Step]) {
                steps.iter().for_each(|&s| self.step(s));
            }

            /// The firmware: the tryboot partition once after a tryboot
            /// reboot, else the committed one. It must hold a whole image.
            fn power_on(&mut self) -> Slot {
                let a = self.state().autoboot;
                let slot = if std::mem::take(&mut self.flag) { a.tryboot } else { a.committed };
                assert!(self.whole[idx(slot)], "the firmware booted slot {slot:?}, which is not whole: {self:?}");
                if slot != a.committed {
                    self.trial_boots += 1;
                }
                slot
            }

            /// A power cut: the flag is gone.
            fn cut(&mut self) {
                self.flag = false;
            }

            /// init at boot: settles what a cut interrupted; returns what
            /// the boot is.
            fn init_boot(&mut self, booted: Slot) -> AtBoot {
                let (at, writes) = self.state().at_boot(booted);
                self.run(&writes.into_iter().map(Step::W).collect::<Vec<_>>());
                at
            }

            /// init reboots: launches a trial when one is due.
            fn reboot(&mut self, booted: Slot) -> Reboot {
                let (how, writes) = self.state().launch(booted);
                self.run(&writes.into_iter().map(Step::W).collect::<Vec<_>>());
                if how == Reboot::Tryboot {
                    self.step(Step::TrybootReboot);
                }
                how
            }

            /// Boots until the node settles (relaunching cut-off trials,
            /// committing a healthy trial): the slot it ends on.
            fn settle(&mut self) -> Slot {
                for _ in 0..10 {
                    let booted = self.power_on();
                    match self.init_boot(booted) {
                        AtBoot::Committed | AtBoot::TrialFailed { .. } => return booted,
                        AtBoot::OnTrial => {
                            let w = self.state().commit(booted).unwrap();
                            self.run(&w.into_iter().map(Step::W).collect::<Vec<_>>());
                            return booted;
                        }
                        AtBoot::Relaunch { .. } | AtBoot::Stray => {
                            self.reboot(booted);
                        }
                    }
                }
                panic!("the node never settled: {self:?}");
            }
        }

        fn w(writes: Vec<Write>) -> Vec<Step> {
            writes.into_iter().map(Step::W).collect()
        }

        /// The steps of an upgrade of the other slot, from `pi`'s state,
        /// through its launch.
        fn upgrade(pi: &Pi, booted: Slot) -> Vec<Step> {
            let target = booted.other();
            let mut sim = pi.clone();
            let mut steps = w(sim.state().clear(target, booted).unwrap());
            steps.extend([Step::Partial(target), Step::Whole(target)]);
            sim.run(&steps);
            let arm = w(sim.state().arm(target, TRIAL_TRIES).unwrap());
            sim.run(&arm);
            steps.extend(arm);
            let (how, launch) = sim.state().launch(booted);
            assert_eq!(how, Reboot::Tryboot);
            steps.extend(w(launch));
            steps.push(Step::TrybootReboot);
            steps
        }

        #[test]
        fn autoboot_is_one_sector_and_reads_back() {
            let fresh = autoboot_txt(&BootState::fresh(), Slot::A, PARTS);
            assert_eq!(fresh.len(), AUTOBOOT_LEN);
            assert!(fresh.starts_with("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n#"));
            assert!(fresh.ends_with('\n') && fresh.lines().all(|l| l.len() < 80), "short lines");
            for (committed, tryboot) in [(Slot::A, Slot::B), (Slot::B, Slot::B), (Slot::B, Slot::A)] {
                let a = Autoboot { committed, tryboot };
                assert_eq!(Autoboot::parse(a.encode(PARTS).as_bytes(), PARTS), Ok(a));
                assert_eq!(parse(&a.encode(PARTS), PARTS), Some((committed, tryboot)));
            }
            assert_eq!(parse("[all]\nboot_partition=3\n", PARTS), Some((Slot::B, Slot::B)));
            assert!(Autoboot::parse(b"[all]\nboot_partition=9\n", PARTS).unwrap_err().to_string().contains("=9"));
            assert!(Autoboot::parse(b"[tryboot]\nboot_partition=2\n", PARTS).is_err());
            assert!(Autoboot::parse(&[0xff, 0xfe], PARTS).is_err());
        }

        #[test]
        fn records_round_trip_and_junk_is_refused() {
            let cases = [
                None,
                Some(Record { slot: Slot::B, other: Other::Empty }),
                Some(Record { slot: Slot::A, other: Other::Trial { left: 2, done: 1 } }),
                Some(Record { slot: Slot::B, other: Other::Failed { done: 3 } }),
            ];
            for r in cases {
                assert_eq!(Record::parse(&Record::encode(r)), Ok(r), "{r:?}");
            }
            assert_eq!(Record::parse(""), Ok(None), "no file yet");
            for junk in ["c empty", "b trial 1", "b trial x 1", "b failed 1 2", "b", "b committed"] {
                assert!(Record::parse(junk).is_err(), "{junk}");
            }
        }

        #[test]
        fn a_power_cut_at_every_step_of_an_upgrade_boots_a_whole_slot() {
            let base = Pi::fresh();
            let mut steps = upgrade(&base, Slot::A);
            // The trial boot, healthy: committed.
            let mut sim = base.clone();
            sim.run(&steps);
            assert_eq!(sim.power_on(), Slot::B);
            assert_eq!(sim.init_boot(Slot::B), AtBoot::OnTrial);
            let commit = w(sim.state().commit(Slot::B).unwrap());
            steps.extend(commit);
            // Then a rollback to A.
            let mut done = base.clone();
            done.run(&steps);
            done.flag = false;
            let (to, rollback) = done.state().rollback(Slot::B).unwrap();
            assert_eq!(to, Slot::A);
            steps.extend(w(rollback));
            for cut in 0..=steps.len() {
                let mut pi = base.clone();
                pi.run(&steps[..cut]);
                pi.cut();
                let settled = pi.settle();
                let s = pi.state();
                assert_eq!(settled, s.autoboot.committed, "cut after {cut} steps: ends on the committed slot");
                // Whatever the cut, the next power-on boots the same whole slot.
                assert_eq!(pi.clone().power_on(), settled, "cut after {cut}");
                assert!(pi.trial_boots <= TRIAL_TRIES, "cut after {cut}: {pi:?}");
            }
            // Without a cut: on A again, B committed as the fallback.
            let mut pi = base.clone();
            pi.run(&steps);
            pi.cut();
            assert_eq!(pi.settle(), Slot::A);
            assert_eq!(pi.state().other(), None, "B is committed");
        }

        #[test]
        fn each_cut_off_trial_is_counted_once_until_the_tries_are_spent() {
            let mut pi = Pi::fresh();
            let steps = upgrade(&pi, Slot::A);
            pi.run(&steps);
            for n in 1..=TRIAL_TRIES {
                // The trial boot dies (power cut, crash, watchdog)…
                assert_eq!(pi.power_on(), Slot::B);
                assert_eq!(pi.init_boot(Slot::B), AtBoot::OnTrial);
                assert_eq!(pi.trial_boots, n);
                let Some(Other::Trial { left, done }) = pi.state().other() else { panic!("{pi:?}") };
                assert_eq!((left, done), (TRIAL_TRIES - n, n), "counted once, before the boot");
                pi.cut();
                // …the firmware boots A, which launches it again while tries are left.
                assert_eq!(pi.power_on(), Slot::A);
                let at = pi.init_boot(Slot::A);
                if n < TRIAL_TRIES {
                    assert_eq!(at, AtBoot::Relaunch { slot: Slot::B, left: TRIAL_TRIES - n, done: n });
                    assert_eq!(pi.reboot(Slot::A), Reboot::Tryboot);
                } else {
                    assert_eq!(at, AtBoot::TrialFailed { slot: Slot::B, done: n });
                }
            }
            // Failed, disarmed, and it stays on A.
            assert_eq!(pi.state().other(), Some(Other::Failed { done: TRIAL_TRIES }));
            assert_eq!(pi.state().autoboot, Autoboot { committed: Slot::A, tryboot: Slot::A });
            assert_eq!(pi.state().boot_state().view(Slot::B, Slot::A), View::Failed);
            assert_eq!(pi.reboot(Slot::A), Reboot::Normal);
            assert_eq!(pi.power_on(), Slot::A);
            assert_eq!(pi.init_boot(Slot::A), AtBoot::Committed);
            assert_eq!(pi.trial_boots, TRIAL_TRIES);
            assert!(matches!(pi.state().rollback(Slot::A), Err(SlotError::NothingToRollBackTo("b", "failed"))));
        }

        #[test]
        fn a_cut_between_the_count_and_the_reboot_spends_that_try_only() {
            let mut pi = Pi::fresh();
            let steps = upgrade(&pi, Slot::A);
            // Everything but the reboot itself: the try is counted, not booted.
            pi.run(&steps[..steps.len() - 1]);
            pi.cut();
            assert_eq!(pi.power_on(), Slot::A);
            assert_eq!(pi.init_boot(Slot::A), AtBoot::Relaunch { slot: Slot::B, left: TRIAL_TRIES - 1, done: 1 });
            assert_eq!(pi.reboot(Slot::A), Reboot::Tryboot);
            assert_eq!(pi.power_on(), Slot::B);
            assert_eq!(pi.state().other(), Some(Other::Trial { left: TRIAL_TRIES - 2, done: 2 }));
            assert_eq!(pi.trial_boots, 1);
        }

        #[test]
        fn an_unhealthy_trial_fails_at_once_and_a_staged_one_waits() {
            let mut pi = Pi::fresh();
            let steps = upgrade(&pi, Slot::A);
            // Staged: armed, not launched; a power cycle leaves it armed.
            let launch_at = steps.iter().rposition(|s| matches!(s, Step::W(Write::Record(_)))).unwrap();
            pi.run(&steps[..launch_at]);
            pi.cut();
            assert_eq!(pi.power_on(), Slot::A);
            assert_eq!(pi.init_boot(Slot::A), AtBoot::Committed);
            let bs = pi.state().boot_state();
            assert_eq!((bs.view(Slot::B, Slot::A), bs.next_boot()), (View::TrialPending, Some(Slot::B)));
            // An upgrade while on trial is refused; the health gate gives up.
            assert_eq!(pi.reboot(Slot::A), Reboot::Tryboot);
            assert_eq!(pi.power_on(), Slot::B);
            assert_eq!(pi.init_boot(Slot::B), AtBoot::OnTrial);
            assert_eq!(pi.state().boot_state().view(Slot::B, Slot::B), View::TrialBooted);
            assert_eq!(pi.state().clear(Slot::A, Slot::B), Err(SlotError::OnTrial("b")));
            let give_up = w(pi.state().give_up(Slot::B));
            pi.run(&give_up);
            assert_eq!(pi.reboot(Slot::B), Reboot::Normal);
            assert_eq!(pi.power_on(), Slot::A);
            assert_eq!(pi.init_boot(Slot::A), AtBoot::Committed);
            assert_eq!(pi.state().autoboot.tryboot, Slot::A, "disarmed");
            assert_eq!(pi.state().boot_state().view(Slot::B, Slot::A), View::Failed);
            // A new upgrade over the failed slot works as from scratch.
            let again = upgrade(&pi, Slot::A);
            pi.run(&again);
            assert_eq!(pi.power_on(), Slot::B);
            // Rolling back from the trial fails it and boots A.
            let (to, rb) = pi.state().rollback(Slot::B).unwrap();
            assert_eq!(to, Slot::A);
            pi.run(&w(rb));
            assert_eq!(pi.reboot(Slot::B), Reboot::Normal);
            assert_eq!(pi.power_on(), Slot::A);
            assert_eq!(pi.init_boot(Slot::A), AtBoot::Committed);
        }

        #[test]
        fn stale_records_and_stray_boots() {
            // A commit cut off before the record went: the record is stale.
            let s = PiState {
                autoboot: Autoboot { committed: Slot::B, tryboot: Slot::B },
                record: Some(Record { slot: Slot::B, other: Other::Trial { left: 2, done: 1 } }),
            };
            assert_eq!(s.other(), None);
            assert_eq!(s.at_boot(Slot::B), (AtBoot::Committed, Vec::new()));
            // The firmware booted the slot being written (not by Plinth's reboot).
            let s = PiState {
                autoboot: Autoboot { committed: Slot::A, tryboot: Slot::A },
                record: Some(Record { slot: Slot::B, other: Other::Empty }),
            };
            assert_eq!(s.at_boot(Slot::B).0, AtBoot::Stray);
            assert_eq!(s.launch(Slot::B).0, Reboot::Normal);
            assert_eq!(s.arm(Slot::A, 1), Err(SlotError::NotCleared("a")));
            assert_eq!(s.commit(Slot::A), Err(SlotError::NotOnTrial("a")));
            // Armed, then cut before [tryboot] was written: the launch writes it first.
            let s = PiState {
                autoboot: Autoboot { committed: Slot::A, tryboot: Slot::A },
                record: Some(Record { slot: Slot::B, other: Other::Trial { left: 1, done: 0 } }),
            };
            let (how, writes) = s.launch(Slot::A);
            assert_eq!(how, Reboot::Tryboot);
            assert_eq!(
                writes,
                [
                    Write::Autoboot(Autoboot { committed: Slot::A, tryboot: Slot::B }),
                    Write::Record(Some(Record { slot: Slot::B, other: Other::Trial { left: 0, done: 1 } })),
                ]
            );
        }
    }
}
