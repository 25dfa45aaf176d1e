//! Error text shared by every module: [`error_chain`] puts an error and its causes on one line,
//! for logs, `status` and `check`. A leaf: it imports nothing of the crate, so the stages (and
//! `aws`) can use it without depending on the composition root in `lib.rs`.

/// An error with its causes, on one line: reqwest's and the AWS SDK's top levels say only "error
/// sending request" or "dispatch failure". A cause its parent already quotes is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string().trim().replace('\n', " ");
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string().trim().replace('\n', " ");
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
