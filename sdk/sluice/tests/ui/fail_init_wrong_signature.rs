// An init without the `&Config` parameter: the error points at `setup`.
fn setup() -> sluice::Result<()> {
    Ok(())
}

#[sluice::transform(init = setup)]
fn run(_record: sluice::Record, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
