//! Exact resource quantities ("100m", "1.5Gi", "2e3") for quota
//! arithmetic: sums and comparisons in nano-units with no rounding, and
//! upstream's canonical form when written back (`status.used`).

/// A quantity in nano-units; `binary` when it was written with a binary
/// suffix (Ki, Mi…), which its canonical form keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    binary: bool,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Quantity) -> bool {
        self.nanos == other.nanos
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Quantity) -> Option<std::cmp::Ordering> {
        Some(self.nanos.cmp(&other.nanos))
    }
}

const NANO: i128 = 1_000_000_000;
const BINARY: &[(&str, u32)] = &[("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
const DECIMAL: &[(&str, i32)] =
    &[("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3), ("", 0), ("m", -3), ("u", -6), ("n", -9)];

impl Quantity {
    pub const ZERO: Quantity = Quantity { nanos: 0, binary: false };

    /// Parses upstream's quantity syntax; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (sign, rest) = match s.as_bytes().first()? {
            b'-' => (-1i128, &s[1..]),
            b'+' => (1, &s[1..]),
            _ => (1, s),
        };
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(end);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return None;
        }
        // The digits as an integer, and the power of ten they are scaled by.
        let digits: String = format!("{int}{frac}");
        let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
        let mut exp10: i32 = -(frac.len() as i32);
        let mut binary = false;
        let mut shift = 0u32;
        if let Some(&(_, bits)) = BINARY.iter().find(|(sfx, _)| *sfx == suffix) {
            binary = true;
            shift = bits;
        } else if let Some(&(_, e)) = DECIMAL.iter().find(|(sfx, _)| *sfx == suffix) {
            exp10 += e;
        } else if let Some(e) = suffix.strip_prefix(['e', 'E']) {
            exp10 += e.parse::<i32>().ok()?;
        } else {
            return None;
        }
        // To nano-units; below a nano-unit, upstream rounds up.
        let mut v = mantissa.checked_mul(1i128.checked_shl(shift)?)?;
        let e = exp10 + 9;
        if e >= 0 {
            v = v.checked_mul(10i128.checked_pow(e as u32)?)?;
        } else {
            let d = 10i128.checked_pow((-e) as u32)?;
            v = (v + d - 1) / d;
        }
        Some(Quantity { nanos: sign * v, binary })
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The product by a whole number.
    pub fn times(self, n: i128) -> Quantity {
        Quantity { nanos: self.nanos.saturating_mul(n), binary: self.binary }
    }

    /// The value in thousandths, rounded up (upstream's `MilliValue`).
    pub fn milli(&self) -> i128 {
        (self.nanos + 999_999).div_euclid(1_000_000)
    }
}

/// The sum keeps the form of the left side (of the right one when the left is zero).
impl std::ops::Add for Quantity {
    type Output = Quantity;

    fn add(self, other: Quantity) -> Quantity {
        let binary = if self.nanos == 0 { other.binary } else { self.binary };
        Quantity { nanos: self.nanos.saturating_add(other.nanos), binary }
    }
}

/// Upstream's canonical form: the largest suffix that keeps the value exact
/// (binary suffixes for binary quantities of whole units, from 1Ki).
impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.nanos;
        if v == 0 {
            return write!(f, "0");
        }
        if self.binary && v % NANO == 0 {
            let units = v / NANO;
            if let Some((sfx, bits)) = BINARY.iter().find(|(_, bits)| units % (1i128 << bits) == 0) {
                return write!(f, "{}{sfx}", units >> bits);
            }
        }
        for (sfx, e) in DECIMAL {
            let scale = 10i128.pow((e + 9) as u32);
            if v % scale == 0 {
                return write!(f, "{}{sfx}", v / scale);
            }
        }
        write!(f, "{v}n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn parses_and_compares_exactly() {
        assert_eq!(q("100m"), q("0.1"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("2e3"), q("2k"));
        assert!(q("999m") < q("1"));
        assert!(q("-1").is_negative());
        for bad in ["", "1.2.3", "12X", "m", "1Kb"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(q("1.5").milli(), 1500);
        assert_eq!(q("1n").milli(), 1);
    }

    #[test]
    fn sums_keep_the_form_of_their_first_term() {
        assert_eq!((q("500m") + q("250m")).to_string(), "750m");
        assert_eq!((q("1") + q("1")).to_string(), "2");
        assert_eq!((q("64Mi") + q("64Mi")).to_string(), "128Mi");
        assert_eq!((Quantity::ZERO + q("1Gi")).to_string(), "1Gi");
        assert_eq!(q("1000").to_string(), "1k");
        assert_eq!(q("100Mi").times(3).to_string(), "300Mi");
        assert_eq!(q("1500Mi").to_string(), "1500Mi");
        assert_eq!(Quantity::ZERO.to_string(), "0");
    }
}
