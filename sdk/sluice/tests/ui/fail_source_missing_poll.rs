use sluice::connector::{ConfigKey, Position, Source};
use sluice::{Config, Result};

struct Half;

#[sluice::source]
impl Source for Half {
    fn keys() -> Vec<ConfigKey> {
        Vec::new()
    }

    fn init(_config: &Config, _positions: Vec<Position>) -> Result<Half> {
        Ok(Half)
    }
}

fn main() {}
