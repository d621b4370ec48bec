//! Kubernetes resource quantities (`500m`, `1`, `128Mi`, `1G`, `1e3`),
//! parsed exactly as apimachinery's `resource.Quantity` reads them and
//! turned into whole units or thousandths, rounded up. No floating point:
//! `0.1` CPU must be exactly 100 millicores.

use std::fmt;

/// A parsed quantity: `mantissa * 10^exp10 * 2^exp2`, with a sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

/// Why a string is not a quantity (or does not fit an i64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub String);

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuantityError {}

/// More significant digits than this cannot be held exactly.
const MAX_DIGITS: usize = 36;
/// Exponents beyond this are certainly out of any i64 range.
const MAX_EXP: i32 = 64;

impl Quantity {
    /// Parses `s` with Kubernetes' grammar: a signed decimal number and an
    /// optional suffix (binary `Ki`..`Ei`, decimal `n u m k M G T P E`, or an
    /// exponent `e3`/`E-2`).
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let bad = || QuantityError(format!("{s:?} is not a quantity"));
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_len);
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return Err(bad());
        }
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        // Trailing zeros of the fraction carry no value.
        let trimmed = digits.trim_end_matches('0');
        let mut exp10 = (digits.len() - trimmed.len()) as i32 - frac.len() as i32;
        if trimmed.len() > MAX_DIGITS {
            return Err(QuantityError(format!(
                "{s:?} has more precision than a quantity can hold"
            )));
        }
        let mantissa: u128 = if trimmed.is_empty() {
            0
        } else {
            trimmed.parse().map_err(|_| bad())?
        };
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            _ => {
                let e = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(bad)?;
                let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let v: i32 = e.parse().map_err(|_| bad())?;
                if !(-MAX_EXP..=MAX_EXP).contains(&v) {
                    return Err(QuantityError(format!("{s:?} is out of range")));
                }
                exp10 += v;
            }
        }
        Ok(Quantity {
            negative: negative && mantissa != 0,
            mantissa,
            exp10,
            exp2,
        })
    }

    /// True for a value below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value in whole units, rounded up (away from zero, as
    /// `Quantity.Value()` does); `None` if it does not fit an i64.
    pub fn value(&self) -> Option<i64> {
        self.scaled(0)
    }

    /// The value in thousandths (millicores for CPU), rounded up.
    pub fn milli_value(&self) -> Option<i64> {
        self.scaled(3)
    }

    fn scaled(&self, extra10: i32) -> Option<i64> {
        let exp10 = self.exp10 + extra10;
        let base = self.mantissa.checked_mul(1u128.checked_shl(self.exp2)?)?;
        let magnitude = if exp10 >= 0 {
            base.checked_mul(10u128.checked_pow(exp10 as u32)?)?
        } else {
            match 10u128.checked_pow(exp10.unsigned_abs()) {
                Some(div) => base.div_ceil(div),
                // A divisor beyond u128: any non-zero value rounds up to 1.
                None => u128::from(base != 0),
            }
        };
        let v = i64::try_from(magnitude).ok()?;
        Some(if self.negative { -v } else { v })
    }
}

/// Parses `s` as a non-negative quantity, for resources and sizes. The
/// error names the value; the caller adds the field.
pub fn non_negative(s: &str) -> Result<Quantity, QuantityError> {
    let q = Quantity::parse(s)?;
    if q.is_negative() {
        return Err(QuantityError(format!("{s:?} must not be negative")));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> i64 {
        Quantity::parse(s).unwrap().value().unwrap()
    }
    fn m(s: &str) -> i64 {
        Quantity::parse(s).unwrap().milli_value().unwrap()
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(m("500m"), 500);
        assert_eq!(m("1"), 1000);
        assert_eq!(m("0.1"), 100);
        assert_eq!(m(".5"), 500);
        assert_eq!(m("2."), 2000);
        assert_eq!(m("1.5"), 1500);
        assert_eq!(m("250000u"), 250);
        assert_eq!(m("1n"), 1, "a nanocore rounds up to one millicore");
        assert_eq!(m("0"), 0);
        assert_eq!(m("+3"), 3000);
        assert_eq!(v("100m"), 1, "value() rounds up");
    }

    #[test]
    fn memory_forms() {
        assert_eq!(v("128Mi"), 128 << 20);
        assert_eq!(v("1Gi"), 1 << 30);
        assert_eq!(v("1G"), 1_000_000_000);
        assert_eq!(v("1k"), 1000);
        assert_eq!(v("1Ki"), 1024);
        assert_eq!(v("1e3"), 1000);
        assert_eq!(v("1E3"), 1000);
        assert_eq!(v("12e-1"), 2);
        assert_eq!(v("1.5Gi"), 3 << 29);
        assert_eq!(v("0.5Ki"), 512);
        assert_eq!(v("1E"), 1_000_000_000_000_000_000);
        assert_eq!(v("007"), 7);
        assert_eq!(v("1.000000000000000000000000000000000000000000000000"), 1);
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for s in [
            "", "12Qi", "1.2.3", "abc", "Mi", ".", "1 Mi", " 1", "1e", "1e+", "1ee3", "1KiB",
            "--1", "1mi", "0x10",
        ] {
            let e = Quantity::parse(s).unwrap_err();
            assert!(e.0.contains("is not a quantity"), "{s:?}: {e}");
        }
    }

    #[test]
    fn signs_and_range() {
        assert!(Quantity::parse("-1").unwrap().is_negative());
        assert!(!Quantity::parse("-0").unwrap().is_negative());
        assert!(non_negative("-1Mi")
            .unwrap_err()
            .0
            .contains("must not be negative"));
        assert_eq!(Quantity::parse("-1500m").unwrap().value(), Some(-2));
        assert_eq!(Quantity::parse("16Ei").unwrap().value(), None, "beyond i64");
        assert!(Quantity::parse("1e65").is_err());
        assert_eq!(Quantity::parse("1e-40").unwrap().value(), Some(1));
        assert_eq!(Quantity::parse("0Gi").unwrap().value(), Some(0));
    }
}
