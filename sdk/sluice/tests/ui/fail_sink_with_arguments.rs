use sluice::connector::{ConfigKey, Sink, SinkRecord};
use sluice::{Config, Result};

struct Nothing;

#[sluice::sink(batch = 10)]
impl Sink for Nothing {
    fn keys() -> Vec<ConfigKey> {
        Vec::new()
    }

    fn init(_config: &Config) -> Result<Nothing> {
        Ok(Nothing)
    }

    fn put(&mut self, _batch: Vec<SinkRecord>) -> Result<()> {
        Ok(())
    }
}

fn main() {}
