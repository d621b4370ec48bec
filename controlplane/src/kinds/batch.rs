//! Descriptors of `batch/v1`: Job and CronJob. Data only; the rules live
//! in `validate::batch` and `defaults::batch`.

use super::{
    carry_hook, copy_status, mut_hook, reset_status, validate_hook, validate_update_hook, KindInfo,
    Strategy, Subresource,
};
use crate::{defaults, validate};

pub(super) static JOB: KindInfo = KindInfo {
    categories: &["all"],
    subresources: &[Subresource::Status],
    strategy: Strategy {
        default: Some(mut_hook!(Job, defaults::batch::job)),
        validate: Some(validate_hook!(Job, validate::batch::job)),
        validate_update: Some(validate_update_hook!(Job, validate::batch::job_update)),
        prepare_create: Some(mut_hook!(Job, defaults::batch::job_create)),
        status: Some(copy_status!(Job)),
        carry: Some(carry_hook!(Job, defaults::batch::carry_job)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("Job", "batch/v1", "jobs", "job")
};

pub(super) static CRON_JOB: KindInfo = KindInfo {
    short_names: &["cj"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    strategy: Strategy {
        default: Some(mut_hook!(CronJob, defaults::batch::cron_job)),
        validate: Some(validate_hook!(CronJob, validate::batch::cron_job)),
        prepare_create: Some(reset_status!(CronJob)),
        status: Some(copy_status!(CronJob)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("CronJob", "batch/v1", "cronjobs", "cronjob")
};
