struct Filter;

#[sluice::transform]
fn run(_filter: &Filter, _record: sluice::Record, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
