use sluice::connector::{ConfigKey, KeyType, Poll, Position, Source, SourceRecord};
use sluice::{Config, Result};

struct Ticks {
    topic: String,
    next: u64,
}

#[sluice::source]
impl Source for Ticks {
    fn keys() -> Vec<ConfigKey> {
        vec![ConfigKey::new("topic", KeyType::String, "Where ticks go.").required()]
    }

    fn init(config: &Config, _positions: Vec<Position>) -> Result<Ticks> {
        Ok(Ticks { topic: config.require("topic")?.to_owned(), next: 0 })
    }

    fn poll(&mut self) -> Result<Poll> {
        self.next += 1;
        Ok(Poll::records(vec![SourceRecord::new(&self.topic, self.next.to_string())], Vec::new()))
    }
}

fn main() {
    let mut ticks = Ticks::init(&Config::from_pairs([("topic", "t")]), Vec::new()).unwrap();
    assert_eq!(ticks.poll().unwrap().records[0].value.as_deref(), Some(&b"1"[..]));
}
