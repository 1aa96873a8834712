//! Kafka error codes the client reacts to rather than only reports, and their names as Kafka spells
//! them (`UNKNOWN_TOPIC_OR_PARTITION (3)`), which is what people search for.

use kafka_protocol::ResponseError;

pub const NONE: i16 = 0;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const FENCED_INSTANCE_ID: i16 = 82;

/// `3` → `UNKNOWN_TOPIC_OR_PARTITION (3)`.
pub fn error_label(code: i16) -> String {
    let name = match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN_ERROR_CODE".to_string(),
        Some(error) => {
            let camel = error.to_string();
            let mut snake = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_uppercase());
            }
            snake
        }
    };
    format!("{name} ({code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_use_kafka_names() {
        assert_eq!(error_label(UNKNOWN_TOPIC_OR_PARTITION), "UNKNOWN_TOPIC_OR_PARTITION (3)");
        assert_eq!(error_label(NONE), "NONE (0)");
        assert_eq!(error_label(-1), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(error_label(9999), "UNKNOWN_ERROR_CODE (9999)");
    }
}
