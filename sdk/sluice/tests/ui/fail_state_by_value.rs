struct Filter;

fn make(_config: &sluice::Config) -> sluice::Result<Filter> {
    Ok(Filter)
}

#[sluice::transform(init = make)]
fn run(_filter: Filter, _record: sluice::Record, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
