//! Topic and group name rules. Topic names follow Kafka's: 1–249 characters of ASCII letters,
//! digits, `.`, `_` and `-`, and not `.` or `..` (they would be directory names with a meaning).
//! Names starting with `__` are valid names but reserved for internal topics: the broker refuses
//! them for user topics with [`NameError::InternalPrefix`].

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// "topic" or "group".
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} name is {len} characters long, the maximum is {max}")]
    TooLong {
        /// "topic" or "group".
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name has a character outside the allowed set.
    #[error(
        "topic name {name:?} contains {ch:?}: only ASCII letters, digits, '.', '_' and '-' are allowed"
    )]
    BadChar {
        /// The name.
        name: String,
        /// The first bad character.
        ch: char,
    },
    /// `.` and `..` are reserved.
    #[error("topic name {0:?} is reserved")]
    Reserved(String),
    /// Names starting with `__` belong to internal topics (such as `__consumer_offsets`); the
    /// broker refuses them for user topics.
    #[error("topic names starting with \"__\" are reserved for internal topics: {0:?}")]
    InternalPrefix(String),
}

/// Longest topic name, as in Kafka.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Longest group id.
pub const MAX_GROUP_ID_LEN: usize = 255;

/// Checks a topic name.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind: "topic" });
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(NameError::TooLong {
            kind: "topic",
            len: name.len(),
            max: MAX_TOPIC_NAME_LEN,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved(name.to_string()));
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            name: name.to_string(),
            ch,
        });
    }
    Ok(())
}

/// Checks a consumer group id: non-empty, at most 255 bytes, no control characters.
pub fn validate_group_id(id: &str) -> Result<(), NameError> {
    if id.is_empty() {
        return Err(NameError::Empty { kind: "group" });
    }
    if id.len() > MAX_GROUP_ID_LEN {
        return Err(NameError::TooLong {
            kind: "group",
            len: id.len(),
            max: MAX_GROUP_ID_LEN,
        });
    }
    if let Some(ch) = id.chars().find(|c| c.is_control()) {
        return Err(NameError::BadChar {
            name: id.to_string(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["a", "orders", "orders.v2", "a_b-c", &"x".repeat(249)] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            validate_topic_name(""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            validate_topic_name(&"x".repeat(250)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            validate_topic_name(".."),
            Err(NameError::Reserved(_))
        ));
        for bad in ["a b", "a/b", "ü", "a\0", "../x"] {
            assert!(
                matches!(validate_topic_name(bad), Err(NameError::BadChar { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn group_ids() {
        assert!(validate_group_id("my group/1").is_ok());
        assert!(validate_group_id("").is_err());
        assert!(validate_group_id("a\nb").is_err());
    }
}
