//! `type = "otlp_http"`: OTLP/HTTP to `endpoint` (`/v1/<signal>` appended), optionally signed
//! with SigV4. Its batches are the configured ones.

use super::aws::{AwsAccess, SigV4};
use super::{required_endpoint, Kind, Refusal, TypeRules, TypeSettings, WrittenSecrets};
use crate::config::schema::{Compression, DestinationConfig, DestinationKind, Encoding};
use crate::config::values::Endpoint;

pub(super) const RULES: TypeRules = TypeRules {
    own_keys: OtlpHttp::own_keys,
    check: OtlpHttp::check,
    from_raw: |raw| OtlpHttp::from_raw(raw).map(Kind::OtlpHttp),
};

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpHttp {
    pub endpoint: Endpoint,
    pub format: OtlpFormat,
    pub sigv4: Option<SigV4>,
}

/// How OTLP request bodies are written (`otlp_http` and `cloudwatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpFormat {
    pub encoding: Encoding,
    pub compression: Compression,
}

impl OtlpFormat {
    pub(super) fn from_raw(raw: &DestinationConfig) -> OtlpFormat {
        OtlpFormat {
            encoding: raw.encoding,
            compression: raw.compression,
        }
    }

    pub(super) fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.encoding = self.encoding;
        raw.compression = self.compression;
    }
}

impl OtlpHttp {
    /// The keys only this type takes (none: `encoding` and `compression` are `cloudwatch`'s
    /// too, `sigv4` is `prometheus_remote_write`'s too).
    fn own_keys(_: &DestinationConfig) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    /// The rules this type adds to what its fields need: AWS's.
    fn check(raw: &DestinationConfig) -> Result<(), Refusal> {
        SigV4::check(raw)
    }

    fn from_raw(raw: &DestinationConfig) -> Result<OtlpHttp, Refusal> {
        Ok(OtlpHttp {
            endpoint: required_endpoint(raw)?,
            format: OtlpFormat::from_raw(raw),
            sigv4: SigV4::from_raw(raw),
        })
    }
}

impl TypeSettings for OtlpHttp {
    fn kind_name(&self) -> DestinationKind {
        DestinationKind::OtlpHttp
    }

    fn write_raw(&self, raw: &mut DestinationConfig) {
        raw.endpoint = self.endpoint.clone();
        self.format.write_raw(raw);
        if let Some(sigv4) = &self.sigv4 {
            sigv4.write_raw(raw);
        }
    }

    fn secrets_written_in_file(&self) -> WrittenSecrets {
        WrittenSecrets::of_signed_endpoint(&self.endpoint, self.sigv4.as_ref())
    }

    fn endpoint_display(&self) -> String {
        self.endpoint.masked()
    }

    fn aws_access(&self) -> Option<AwsAccess<'_>> {
        self.sigv4.as_ref().map(SigV4::access)
    }
}
