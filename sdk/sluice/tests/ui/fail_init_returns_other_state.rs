// The init returns a `Counter` but the transform takes a `&Filter`: the error points at the init path.
struct Filter;
struct Counter;

fn make_counter(_config: &sluice::Config) -> sluice::Result<Counter> {
    Ok(Counter)
}

#[sluice::transform(init = make_counter)]
fn run(_filter: &Filter, _record: sluice::Record, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
