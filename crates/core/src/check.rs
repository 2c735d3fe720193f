//! Range checks for configuration values. Each section's `validate` returns the field and the reason; the
//! config layer adds the file (`config FILE: field `F`: REASON`), so every message has the same shape.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// A configuration value that is not allowed: the field's dotted name and why.
pub type Invalid = (&'static str, String);

/// `value` must lie in `range` (NaN never does): "`V` is not between `LO` and `HI`".
pub fn within<T: PartialOrd + Display>(field: &'static str, value: T, range: RangeInclusive<T>) -> Result<(), Invalid> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err((
            field,
            format!("{value} is not between {} and {}", range.start(), range.end()),
        ))
    }
}

/// `value` must be at most `max`: "`V` is more than `MAX`".
pub fn at_most<T: PartialOrd + Display>(field: &'static str, value: T, max: T) -> Result<(), Invalid> {
    if value <= max {
        Ok(())
    } else {
        Err((field, format!("{value} is more than {max}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_value_and_the_bounds() {
        assert_eq!(
            within("a.b", 5u32, 1..=4),
            Err(("a.b", "5 is not between 1 and 4".into()))
        );
        assert_eq!(within("a.b", 4u32, 1..=4), Ok(()));
        assert_eq!(
            within("x", 1.5f32, 0.0..=1.0),
            Err(("x", "1.5 is not between 0 and 1".into()))
        );
        assert!(within("x", f32::NAN, 0.0..=1.0).is_err());
        assert!(within("x", f64::INFINITY, 0.0..=1000.0).is_err());
        assert_eq!(at_most("w", 65usize, 64), Err(("w", "65 is more than 64".into())));
        assert_eq!(at_most("w", 64usize, 64), Ok(()));
    }
}
