//! `ms-bench shm` (being written).
use crate::SuiteArgs;

pub fn run(_args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("the shm suite is not written yet")
}

pub fn child(role: &str, _rest: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("unknown shm child role {role:?}")
}
