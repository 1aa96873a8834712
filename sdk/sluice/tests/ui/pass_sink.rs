use sluice::connector::{ConfigKey, Sink, SinkRecord};
use sluice::{Config, Error, Result};

struct Counting(usize);

#[sluice::sink]
impl sluice::connector::Sink for Counting {
    fn keys() -> Vec<ConfigKey> {
        Vec::new()
    }

    fn init(_config: &Config) -> Result<Counting> {
        Ok(Counting(0))
    }

    fn put(&mut self, batch: Vec<SinkRecord>) -> Result<()> {
        if let Some(idx) = batch.iter().position(|r| r.value.is_none()) {
            return Err(Error::msg("a null value").at_record(idx));
        }
        self.0 += batch.len();
        Ok(())
    }
}

fn main() {
    let mut sink = Counting::init(&Config::default()).unwrap();
    let error = sink.put(vec![]).map(|()| sink.0);
    assert_eq!(error.unwrap(), 0);
}
