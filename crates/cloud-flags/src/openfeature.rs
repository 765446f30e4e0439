//! An OpenFeature provider over [`FlagClient`], so code written against the `open-feature`
//! API works unchanged:
//!
//! ```no_run
//! # async fn demo(client: cloud_flags::FlagClient) {
//! let mut api = open_feature::OpenFeature::singleton_mut().await;
//! api.set_provider(cloud_flags::openfeature::UnleashProvider::new(client)).await;
//! # }
//! ```
//!
//! Booleans are `is_enabled`; strings are the variant name; structs, ints and floats are the
//! variant's `json` / `number` payload. The targeting key is the user id; the custom fields
//! `tenantId`, `sessionId`, `environment`, `appName`, `remoteAddress` and `userId` map to the
//! matching context fields, everything else to properties.

use async_trait::async_trait;
use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode,
    EvaluationReason, EvaluationResult, StructValue, Value,
};

use crate::{FlagClient, FlagContext, PROVIDER_NAME, Variant};

#[derive(Debug, Clone)]
pub struct UnleashProvider {
    client: FlagClient,
    metadata: ProviderMetadata,
}

impl UnleashProvider {
    pub fn new(client: FlagClient) -> Self {
        Self {
            client,
            metadata: ProviderMetadata::new(PROVIDER_NAME),
        }
    }

    fn known(&self, flag: &str) -> EvaluationResult<()> {
        if !self.client.is_ready() {
            return Err(error(
                EvaluationErrorCode::ProviderNotReady,
                "no flag state loaded yet".into(),
            ));
        }
        if !self.client.knows(flag) {
            return Err(error(
                EvaluationErrorCode::FlagNotFound,
                format!("flag {flag:?} is not defined"),
            ));
        }
        Ok(())
    }

    fn variant(&self, flag: &str, ctx: &EvaluationContext) -> EvaluationResult<Variant> {
        self.known(flag)?;
        Ok(self.client.variant(flag, &to_flag_context(ctx)))
    }
}

fn error(code: EvaluationErrorCode, message: String) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message),
    }
}

fn field_string(value: &EvaluationContextFieldValue) -> Option<String> {
    match value {
        EvaluationContextFieldValue::Bool(b) => Some(b.to_string()),
        EvaluationContextFieldValue::Int(i) => Some(i.to_string()),
        EvaluationContextFieldValue::Float(f) => Some(f.to_string()),
        EvaluationContextFieldValue::String(s) => Some(s.clone()),
        EvaluationContextFieldValue::DateTime(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
        EvaluationContextFieldValue::Struct(_) => None,
    }
}

/// Maps an OpenFeature context onto ours.
pub fn to_flag_context(ctx: &EvaluationContext) -> FlagContext {
    let mut out = FlagContext::new();
    if let Some(key) = &ctx.targeting_key {
        out = out.with_user_id(key.clone());
    }
    for (name, value) in &ctx.custom_fields {
        let Some(value) = field_string(value) else {
            continue;
        };
        out = match name.as_str() {
            "userId" => out.with_user_id(value),
            "tenantId" => out.with_tenant_id(value),
            "sessionId" => out.with_session_id(value),
            "environment" => out.with_environment(value),
            "appName" => out.with_app_name(value),
            "remoteAddress" => out.with_remote_address(value),
            "currentTime" => out.with_current_time_str(value),
            _ => out.with_property(name.clone(), value),
        };
    }
    out
}

fn json_to_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::String(String::new()),
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(json_to_value).collect()),
        serde_json::Value::Object(o) => Value::Struct(StructValue {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    }
}

fn details<T>(value: T, variant: &Variant) -> ResolutionDetails<T> {
    let reason = if variant.enabled {
        EvaluationReason::Split
    } else {
        EvaluationReason::Default
    };
    ResolutionDetails {
        value,
        variant: Some(variant.name.to_string()),
        reason: Some(reason),
        flag_metadata: None,
    }
}

fn payload<'a>(flag: &str, variant: &'a Variant, kind: &str) -> EvaluationResult<&'a str> {
    match &variant.payload {
        Some(p) if p.kind == kind => Ok(&p.value),
        Some(p) => Err(error(
            EvaluationErrorCode::TypeMismatch,
            format!(
                "variant {:?} of {flag:?} has a {} payload, not {kind}",
                variant.name, p.kind
            ),
        )),
        None => Err(error(
            EvaluationErrorCode::TypeMismatch,
            format!("variant {:?} of {flag:?} has no payload", variant.name),
        )),
    }
}

#[async_trait]
impl FeatureProvider for UnleashProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        if self.client.is_ready() {
            ProviderStatus::Ready
        } else {
            ProviderStatus::NotReady
        }
    }

    async fn resolve_bool_value(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.known(flag)?;
        let enabled = self.client.is_enabled(flag, &to_flag_context(ctx));
        Ok(ResolutionDetails {
            value: enabled,
            variant: Some(if enabled { "on" } else { "off" }.into()),
            reason: Some(EvaluationReason::TargetingMatch),
            flag_metadata: None,
        })
    }

    async fn resolve_string_value(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        let variant = self.variant(flag, ctx)?;
        Ok(details(variant.name.to_string(), &variant))
    }

    async fn resolve_int_value(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        let variant = self.variant(flag, ctx)?;
        let raw = payload(flag, &variant, "number")?;
        let value = raw.trim().parse::<i64>().map_err(|e| {
            error(
                EvaluationErrorCode::ParseError,
                format!("payload {raw:?} of {flag:?} is not an integer: {e}"),
            )
        })?;
        Ok(details(value, &variant))
    }

    async fn resolve_float_value(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        let variant = self.variant(flag, ctx)?;
        let raw = payload(flag, &variant, "number")?;
        let value = raw.trim().parse::<f64>().map_err(|e| {
            error(
                EvaluationErrorCode::ParseError,
                format!("payload {raw:?} of {flag:?} is not a number: {e}"),
            )
        })?;
        Ok(details(value, &variant))
    }

    async fn resolve_struct_value(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let variant = self.variant(flag, ctx)?;
        let raw = payload(flag, &variant, "json")?;
        let json: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
            error(
                EvaluationErrorCode::ParseError,
                format!("payload of {flag:?} is not JSON: {e}"),
            )
        })?;
        match json_to_value(json) {
            Value::Struct(s) => Ok(details(s, &variant)),
            _ => Err(error(
                EvaluationErrorCode::TypeMismatch,
                format!("payload of {flag:?} is JSON but not an object"),
            )),
        }
    }
}
