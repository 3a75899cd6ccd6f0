//! boxoffice sinks: delivery to the outside world. The notifier (`notify`) reads
//! `notifications.requested` and delivers each notice in-app, by email and to organisers'
//! webhooks; its tables live in `boxoffice_store::notifications`.

pub mod notify;
