//! ApiVersions: advertises exactly the table in `sluice_protocol::SUPPORTED_APIS`.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

pub(crate) fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        sluice_protocol::SUPPORTED_APIS
            .iter()
            .map(|&(key, min, max)| ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max))
            .collect(),
    )
}

/// The answer to an ApiVersions request at a version we do not implement (always encoded as v0).
pub(crate) fn unsupported_version() -> kafka_protocol::messages::ResponseKind {
    handle().with_error_code(ResponseError::UnsupportedVersion.code()).into()
}
