//! `sluice-macros`: the `#[sluice::transform]`, `#[sluice::source]`, `#[sluice::sink]` and
//! `#[sluice::mirror_policy]` attributes. Users reach them through the `sluice` crate. The connector
//! and policy attributes go on the user's `impl Source for T` / `impl Sink for T` /
//! `impl mirror::Policy for T` (the trait checks the signatures) and, on wasm32, generate that
//! world's bindings in the user's crate with the export glue (see `WIT` for why there).
//!
//! The attribute keeps the user's function as written (so native unit tests call it directly) and,
//! on wasm32 only, adds the component export glue: a type implementing the generated `Guest` trait
//! that forwards `init` and `process` to the SDK's batch loop, and the `wit-bindgen` export macro.
//!
//! Two forms:
//! - `fn run(record: Record, out: &mut Writer) -> Result<()>`, optionally with
//!   `init = check` where `fn check(&Config) -> Result<()>` only validates the configuration;
//! - `fn run(state: &S, record: Record, out: &mut Writer) -> Result<()>` with `init = make` where
//!   `fn make(&Config) -> Result<S>` builds the state once per instance; every call gets it.
//!
//! The signature is checked here, with errors pointing at the offending tokens; the types are
//! checked by coercions the expansion emits, spanned to the function or the init path.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Error, FnArg, ItemFn, Path, ReturnType, Token, Type, parse_macro_input};

/// `#[sluice::transform]`, `#[sluice::transform(init = path::to::init_fn)]`.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as Args);
    let function = parse_macro_input!(item as ItemFn);
    match expand(args, function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

struct Args {
    init: Option<Path>,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut init = None;
        while !input.is_empty() {
            let name: syn::Ident = input.parse()?;
            if name != "init" {
                return Err(Error::new(name.span(), "unknown argument; the only one is `init = path::to::fn(&Config) -> Result<State>`"));
            }
            input.parse::<Token![=]>()?;
            if init.is_some() {
                return Err(Error::new(name.span(), "`init` given twice"));
            }
            init = Some(input.parse()?);
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Args { init })
    }
}

const SIGNATURE: &str = "a transform is `fn(record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()>`, \
                         or `fn(state: &State, record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()>` \
                         with `init = fn(&sluice::Config) -> sluice::Result<State>`";

fn expand(args: Args, function: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &function.sig;
    if let Some(asyncness) = sig.asyncness {
        return Err(Error::new(asyncness.span(), format!("a transform cannot be async; {SIGNATURE}")));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(sig.generics.span(), format!("a transform cannot be generic; {SIGNATURE}")));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(Error::new(receiver.span(), format!("a transform is a free function, not a method; {SIGNATURE}")));
    }
    if !(2..=3).contains(&sig.inputs.len()) {
        return Err(Error::new(sig.inputs.span(), format!("expected two parameters, or three with state first; {SIGNATURE}")));
    }
    if let ReturnType::Default = sig.output {
        return Err(Error::new(sig.paren_token.span.close(), format!("missing return type; {SIGNATURE}")));
    }
    let name = &sig.ident;
    // The state's type, for the stateful form: the first parameter must be `&State`.
    let state = match (sig.inputs.len(), sig.inputs.first()) {
        (3, Some(FnArg::Typed(first))) => match &*first.ty {
            Type::Reference(reference) if reference.mutability.is_none() => Some((*reference.elem).clone()),
            other => {
                return Err(Error::new(
                    other.span(),
                    "the state parameter must be a shared reference, `&State`: the transform gets the state its init returned on every call",
                ));
            }
        },
        _ => None,
    };
    let (state_ty, run, init) = match (&state, &args.init) {
        (Some(_), None) => {
            return Err(Error::new(
                sig.inputs.first().span(),
                "a transform with state needs `#[sluice::transform(init = make_state)]`, with `fn make_state(&sluice::Config) -> sluice::Result<State>`",
            ));
        }
        (Some(state_ty), Some(init)) => (quote!(#state_ty), quote!(#name), quote!(#init)),
        (None, init) => {
            let init = init.as_ref().map_or_else(|| quote!(::sluice::__private::no_init), |init| quote!(#init));
            (quote!(()), quote!(|_: &(), record, out: &mut ::sluice::Writer| #name(record, out)), init)
        }
    };
    // The type checks run on every target, so a wrong signature fails `cargo test` too. Spanned, so
    // a mismatch points at the function or at the init path.
    let run_check = match &state {
        Some(state_ty) => quote_spanned!(sig.ident.span()=> const _: ::sluice::__private::StatefulTransformFn<#state_ty> = #name;),
        None => quote_spanned!(sig.ident.span()=> const _: ::sluice::__private::TransformFn = #name;),
    };
    let init_check = match &args.init {
        Some(path) => quote_spanned!(path.span()=> const _: ::sluice::__private::InitFn<#state_ty> = #path;),
        None => quote!(),
    };
    let guest = syn::Ident::new("__SluiceTransform", Span::call_site());
    Ok(quote! {
        #function

        #run_check
        #init_check

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct #guest;

            impl ::sluice::__private::Guest for #guest {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    outputs: ::std::vec::Vec<::std::string::String>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    ::sluice::__private::export_init::<#state_ty>(config, outputs, #init).map_err(::sluice::Error::into_message)
                }

                fn process(
                    batch: ::std::vec::Vec<::sluice::__private::WitInputRecord>,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<::sluice::__private::WitOutputRecord>,
                    ::sluice::__private::WitTransformError,
                > {
                    ::sluice::__private::export_process::<#state_ty>(batch, #run)
                }
            }

            impl ::sluice::__private::BatchGuest for #guest {
                fn process_encoded(
                    partition: i32,
                    count: u32,
                    batch: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::sluice::__private::WitTransformError> {
                    ::sluice::__private::export_process_encoded::<#state_ty>(partition, count, batch, #run)
                }
            }

            ::sluice::__private::bindings::__export_transform!(#guest);
        };
    })
}

/// The WIT package, compiled into this macro so that a connector's crate generates the bindings of
/// its own world (and only those: a component linking bindings of two exporting worlds would claim
/// the exports of both).
const WIT: &str = include_str!("../../wit/plugin.wit");

/// The worlds whose attribute goes on a trait impl.
#[derive(Clone, Copy)]
enum ConnectorWorld {
    Source,
    Sink,
    MirrorPolicy,
}

impl ConnectorWorld {
    fn trait_name(self) -> &'static str {
        match self {
            ConnectorWorld::Source => "Source",
            ConnectorWorld::Sink => "Sink",
            ConnectorWorld::MirrorPolicy => "Policy",
        }
    }

    /// The attribute's name: `#[sluice::<attribute>]`.
    fn attribute(self) -> &'static str {
        match self {
            ConnectorWorld::Source => "source",
            ConnectorWorld::Sink => "sink",
            ConnectorWorld::MirrorPolicy => "mirror_policy",
        }
    }

    /// The SDK module holding the trait.
    fn module(self) -> &'static str {
        match self {
            ConnectorWorld::Source | ConnectorWorld::Sink => "connector",
            ConnectorWorld::MirrorPolicy => "mirror",
        }
    }

    fn usage(self) -> String {
        format!("`#[sluice::{}]` goes on `impl sluice::{}::{} for YourType {{ ... }}`", self.attribute(), self.module(), self.trait_name())
    }
}

/// `#[sluice::source]` on `impl sluice::connector::Source for T { ... }`.
#[proc_macro_attribute]
pub fn source(attr: TokenStream, item: TokenStream) -> TokenStream {
    connector(ConnectorWorld::Source, attr, item)
}

/// `#[sluice::sink]` on `impl sluice::connector::Sink for T { ... }`.
#[proc_macro_attribute]
pub fn sink(attr: TokenStream, item: TokenStream) -> TokenStream {
    connector(ConnectorWorld::Sink, attr, item)
}

/// `#[sluice::mirror_policy]` on `impl sluice::mirror::Policy for T { ... }`.
#[proc_macro_attribute]
pub fn mirror_policy(attr: TokenStream, item: TokenStream) -> TokenStream {
    connector(ConnectorWorld::MirrorPolicy, attr, item)
}

fn connector(world: ConnectorWorld, attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    if !attr.is_empty() {
        let name = world.attribute();
        // The item stays, so the only error is this one.
        let mut tokens = Error::new(attr.span(), format!("`#[sluice::{name}]` takes no arguments")).to_compile_error();
        tokens.extend(proc_macro2::TokenStream::from(item));
        return tokens.into();
    }
    let item = match parse_macro_input!(item as syn::Item) {
        syn::Item::Impl(item) => item,
        other => return Error::new(other.span(), world.usage()).to_compile_error().into(),
    };
    match expand_connector(world, item) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand_connector(world: ConnectorWorld, item: syn::ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    let trait_name = world.trait_name();
    let usage = world.usage();
    let Some((_, trait_path, _)) = &item.trait_ else {
        return Err(Error::new(item.self_ty.span(), usage));
    };
    if trait_path.segments.last().is_none_or(|segment| segment.ident != trait_name) {
        return Err(Error::new(trait_path.span(), usage));
    }
    if !item.generics.params.is_empty() {
        return Err(Error::new(item.generics.span(), format!("a connector type cannot be generic; {usage}")));
    }
    let ty = &item.self_ty;
    let glue = match world {
        ConnectorWorld::Source => source_glue(),
        ConnectorWorld::Sink => sink_glue(),
        ConnectorWorld::MirrorPolicy => return Ok(policy_expansion(&item)),
    };
    let module = syn::Ident::new(&format!("__sluice_{}_export", trait_name.to_lowercase()), Span::call_site());
    let world_name = trait_name.to_lowercase();
    let wit = WIT;
    let trait_ident = syn::Ident::new(trait_name, Span::call_site());
    let host_log = host_log_glue();
    let alias = syn::Ident::new(&format!("__Sluice{trait_name}Connector"), Span::call_site());
    Ok(quote! {
        #item

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type #alias = #ty;

        // The generated export glue is `unsafe` (raw ABI entry points), so the module allows it; a crate
        // that `forbid`s unsafe code cannot export a connector (`deny` is fine).
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(unsafe_code)]
        mod #module {
            type __Connector = super::#alias;

            ::sluice::__private::wit_bindgen::generate!({
                inline: #wit,
                world: #world_name,
                runtime_path: "::sluice::__private::wit_bindgen::rt",
            });

            use self::sluice::plugin::connector_types as ct;
            use self::sluice::plugin::{host, sql, types};

            #host_log

            fn spec() -> ct::ConnectorSpec {
                let keys = <__Connector as ::sluice::connector::#trait_ident>::keys();
                ct::ConnectorSpec {
                    version: ::std::env!("CARGO_PKG_VERSION").to_owned(),
                    keys: keys
                        .into_iter()
                        .map(|key| ct::ConfigKey {
                            name: key.name,
                            type_: match key.kind {
                                ::sluice::connector::KeyType::String => ct::ConfigType::String,
                                ::sluice::connector::KeyType::Int => ct::ConfigType::Int,
                                ::sluice::connector::KeyType::Long => ct::ConfigType::Long,
                                ::sluice::connector::KeyType::Boolean => ct::ConfigType::Boolean,
                                ::sluice::connector::KeyType::List => ct::ConfigType::List,
                                ::sluice::connector::KeyType::Password => ct::ConfigType::Password,
                                ::sluice::connector::KeyType::File => ct::ConfigType::File,
                            },
                            required: key.required,
                            default_value: key.default_value,
                            documentation: key.documentation,
                        })
                        .collect(),
                }
            }

            fn connector_error(error: ::sluice::Error) -> ct::ConnectorError {
                let (message, retriable, _) = ::sluice::__private::error_parts(error);
                ct::ConnectorError { message, retriable }
            }

            /// The `sql` import, for `sluice::sql`: converts between the SDK's types and the
            /// generated ones (the SDK cannot name the bindings, which live in this crate).
            struct SqlBackend;

            fn sql_value_in(value: &::sluice::sql::Value) -> sql::Value {
                use ::sluice::sql::Value as V;
                match value {
                    V::Null => sql::Value::Null,
                    V::Bool(v) => sql::Value::Boolean(*v),
                    V::Int(v) => sql::Value::Int(*v),
                    V::Float(v) => sql::Value::Float(*v),
                    V::Decimal(v) => sql::Value::Decimal(v.clone()),
                    V::Text(v) => sql::Value::Text(v.clone()),
                    V::Bytes(v) => sql::Value::Bytes(v.clone()),
                    V::Json(v) => sql::Value::Json(v.clone()),
                    V::Date(v) => sql::Value::Date(v.clone()),
                    V::Time(v) => sql::Value::Time(v.clone()),
                    V::Timestamp(v) => sql::Value::Timestamp(v.clone()),
                    V::TimestampTz(v) => sql::Value::Timestamptz(v.clone()),
                    V::Uuid(v) => sql::Value::Uuid(v.clone()),
                }
            }

            fn sql_value_out(value: sql::Value) -> ::sluice::sql::Value {
                use ::sluice::sql::Value as V;
                match value {
                    sql::Value::Null => V::Null,
                    sql::Value::Boolean(v) => V::Bool(v),
                    sql::Value::Int(v) => V::Int(v),
                    sql::Value::Float(v) => V::Float(v),
                    sql::Value::Decimal(v) => V::Decimal(v),
                    sql::Value::Text(v) => V::Text(v),
                    sql::Value::Bytes(v) => V::Bytes(v),
                    sql::Value::Json(v) => V::Json(v),
                    sql::Value::Date(v) => V::Date(v),
                    sql::Value::Time(v) => V::Time(v),
                    sql::Value::Timestamp(v) => V::Timestamp(v),
                    sql::Value::Timestamptz(v) => V::TimestampTz(v),
                    sql::Value::Uuid(v) => V::Uuid(v),
                }
            }

            fn sql_error(error: sql::SqlError) -> ::sluice::sql::SqlError {
                use ::sluice::sql::Failure as F;
                let failure = match error.failure {
                    sql::Failure::UnknownConnection => F::UnknownConnection,
                    sql::Failure::Limit => F::Limit,
                    sql::Failure::Unavailable => F::Unavailable,
                    sql::Failure::Refused => F::Refused,
                    sql::Failure::TimedOut => F::TimedOut,
                    sql::Failure::Unsupported => F::Unsupported,
                    sql::Failure::Misuse => F::Misuse,
                };
                ::sluice::sql::SqlError { failure, sqlstate: error.sqlstate, message: error.message }
            }

            impl ::sluice::sql::Backend for SqlBackend {
                fn open(&self, name: &str) -> ::core::result::Result<(u32, ::sluice::sql::Dialect, bool), ::sluice::sql::SqlError> {
                    let conn = sql::open(name).map_err(sql_error)?;
                    let dialect = match conn.dialect {
                        sql::Dialect::Postgres => ::sluice::sql::Dialect::Postgres,
                        sql::Dialect::Mysql => ::sluice::sql::Dialect::MySql,
                        sql::Dialect::Sqlite => ::sluice::sql::Dialect::Sqlite,
                    };
                    ::core::result::Result::Ok((conn.handle, dialect, conn.managed))
                }

                fn close(&self, handle: u32) {
                    sql::close(handle);
                }

                fn query(&self, handle: u32, statement: &str, params: &[::sluice::sql::Value]) -> ::core::result::Result<::sluice::sql::Rows, ::sluice::sql::SqlError> {
                    let params: ::std::vec::Vec<sql::Value> = params.iter().map(sql_value_in).collect();
                    let rows = sql::query(handle, statement, &params).map_err(sql_error)?;
                    ::core::result::Result::Ok(::sluice::sql::Rows {
                        columns: rows.columns.into_iter().map(|c| ::sluice::sql::Column { name: c.name, type_name: c.type_name }).collect(),
                        rows: rows.rows.into_iter().map(|row| row.into_iter().map(sql_value_out).collect()).collect(),
                    })
                }

                fn execute(&self, handle: u32, statement: &str, params: &[::sluice::sql::Value]) -> ::core::result::Result<u64, ::sluice::sql::SqlError> {
                    let params: ::std::vec::Vec<sql::Value> = params.iter().map(sql_value_in).collect();
                    sql::execute(handle, statement, &params).map_err(sql_error)
                }

                fn execute_batch(&self, handle: u32, statement: &str, rows: &[::std::vec::Vec<::sluice::sql::Value>]) -> ::core::result::Result<::std::vec::Vec<u64>, ::sluice::sql::SqlError> {
                    let rows: ::std::vec::Vec<::std::vec::Vec<sql::Value>> = rows.iter().map(|row| row.iter().map(sql_value_in).collect()).collect();
                    sql::execute_batch(handle, statement, &rows).map_err(sql_error)
                }

                fn begin(&self, handle: u32) -> ::core::result::Result<(), ::sluice::sql::SqlError> {
                    sql::begin(handle).map_err(sql_error)
                }

                fn commit(&self, handle: u32) -> ::core::result::Result<(), ::sluice::sql::SqlError> {
                    sql::commit(handle).map_err(sql_error)
                }

                fn rollback(&self, handle: u32) -> ::core::result::Result<(), ::sluice::sql::SqlError> {
                    sql::rollback(handle).map_err(sql_error)
                }
            }

            fn host_gauge(name: &str, value: f64) {
                host::set_gauge(name, value);
            }

            fn on_init() {
                ::sluice::log::set_host_log(host_log);
                ::sluice::metrics::set_host_gauge(host_gauge);
                ::sluice::sql::set_backend(&SqlBackend);
                // A panic traps the instance; log its message first so the host can say why.
                ::std::panic::set_hook(::std::boxed::Box::new(|info| host_log(::sluice::log::Level::Error, &info.to_string())));
            }

            ::std::thread_local! {
                /// The task's state, made by `init`.
                static STATE: ::core::cell::RefCell<::core::option::Option<__Connector>> = const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            #glue

            export!(Export);
        }
    })
}

fn source_glue() -> proc_macro2::TokenStream {
    quote! {
        struct Export;

        impl exports::sluice::plugin::source_connector::Guest for Export {
            fn describe() -> ct::ConnectorSpec {
                spec()
            }

            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                positions: ::std::vec::Vec<ct::SourcePosition>,
            ) -> ::core::result::Result<(), ct::ConnectorError> {
                on_init();
                let positions = positions.into_iter().map(|p| (p.partition, p.offset)).collect();
                let state = ::sluice::__private::source_init::<__Connector>(config, positions).map_err(connector_error)?;
                STATE.with(|current| *current.borrow_mut() = ::core::option::Option::Some(state));
                ::core::result::Result::Ok(())
            }

            fn poll() -> ::core::result::Result<ct::PollResult, ct::ConnectorError> {
                STATE.with(|current| {
                    let mut current = current.borrow_mut();
                    let state = current
                        .as_mut()
                        .ok_or_else(|| ct::ConnectorError { message: "poll called before init".to_owned(), retriable: false })?;
                    let poll = <__Connector as ::sluice::connector::Source>::poll(state).map_err(connector_error)?;
                    let positions = poll
                        .positions
                        .iter()
                        .map(|position| {
                            let (partition, offset) = ::sluice::__private::position_text(position);
                            ct::SourcePosition { partition, offset }
                        })
                        .collect();
                    let records = poll
                        .records
                        .into_iter()
                        .map(|r| ct::SourceRecord {
                            topic: r.topic,
                            partition: r.partition,
                            key: r.key,
                            value: r.value,
                            headers: r.headers.into_iter().map(|h| types::Header { key: h.key, value: h.value }).collect(),
                            timestamp_ms: r.timestamp_ms,
                        })
                        .collect();
                    ::core::result::Result::Ok(ct::PollResult { records, positions, idle_ms: poll.idle_ms })
                })
            }
        }
    }
}

fn sink_glue() -> proc_macro2::TokenStream {
    quote! {
        struct Export;

        impl exports::sluice::plugin::sink_connector::Guest for Export {
            fn describe() -> ct::ConnectorSpec {
                spec()
            }

            fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>) -> ::core::result::Result<(), ct::ConnectorError> {
                on_init();
                let state = ::sluice::__private::sink_init::<__Connector>(config).map_err(connector_error)?;
                STATE.with(|current| *current.borrow_mut() = ::core::option::Option::Some(state));
                ::core::result::Result::Ok(())
            }

            fn put(
                topics: ::std::vec::Vec<::std::string::String>,
                batch: ::std::vec::Vec<ct::SinkRecord>,
            ) -> ::core::result::Result<(), ct::PutError> {
                STATE.with(|current| {
                    let mut current = current.borrow_mut();
                    let state = current.as_mut().ok_or_else(|| ct::PutError {
                        message: "put called before init".to_owned(),
                        retriable: false,
                        record_index: ::core::option::Option::None,
                    })?;
                    let topics: ::std::vec::Vec<::std::rc::Rc<str>> = topics.into_iter().map(::std::rc::Rc::from).collect();
                    let records = batch
                        .into_iter()
                        .map(|r| ::sluice::connector::SinkRecord {
                            topic: topics[r.topic as usize].clone(),
                            partition: r.record.partition,
                            offset: r.record.offset,
                            key: r.record.key,
                            value: r.record.value,
                            headers: r.record.headers.into_iter().map(|h| ::sluice::Header { key: h.key, value: h.value }).collect(),
                            timestamp_ms: r.record.timestamp_ms,
                        })
                        .collect();
                    <__Connector as ::sluice::connector::Sink>::put(state, records).map_err(|error| {
                        let (message, retriable, record_index) = ::sluice::__private::error_parts(error);
                        ct::PutError { message, retriable, record_index }
                    })
                })
            }
        }
    }
}

/// `fn host_log`, in a module that generated a world's bindings (with `host` and `types` in scope):
/// the SDK's log levels onto the WIT's, then the `host.log` import.
fn host_log_glue() -> proc_macro2::TokenStream {
    quote! {
        fn host_log(level: ::sluice::log::Level, message: &str) {
            let level = match level {
                ::sluice::log::Level::Trace => types::LogLevel::Trace,
                ::sluice::log::Level::Debug => types::LogLevel::Debug,
                ::sluice::log::Level::Info => types::LogLevel::Info,
                ::sluice::log::Level::Warn => types::LogLevel::Warn,
                ::sluice::log::Level::Error => types::LogLevel::Error,
            };
            host::log(level, message);
        }
    }
}

/// `#[sluice::mirror_policy]`: the user's impl, and on wasm32 the `mirror-policy` world's bindings
/// and export glue driving it.
fn policy_expansion(item: &syn::ItemImpl) -> proc_macro2::TokenStream {
    let ty = &item.self_ty;
    let wit = WIT;
    let host_log = host_log_glue();
    quote! {
        #item

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __SluiceMirrorPolicy = #ty;

        // The generated export glue is `unsafe` (raw ABI entry points), so the module allows it.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(unsafe_code)]
        mod __sluice_mirror_policy_export {
            type __Policy = super::__SluiceMirrorPolicy;

            ::sluice::__private::wit_bindgen::generate!({
                inline: #wit,
                world: "mirror-policy",
                runtime_path: "::sluice::__private::wit_bindgen::rt",
            });

            use self::exports::sluice::plugin::replication_policy as rp;
            use self::sluice::plugin::{host, types};

            #host_log

            ::std::thread_local! {
                /// The policy, made by `init`.
                static STATE: ::core::cell::RefCell<::core::option::Option<__Policy>> = const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            fn with_policy<T>(
                call: &str,
                f: impl FnOnce(&mut __Policy) -> ::core::result::Result<T, ::std::string::String>,
            ) -> ::core::result::Result<T, ::std::string::String> {
                STATE.with(|current| match current.borrow_mut().as_mut() {
                    ::core::option::Option::Some(policy) => f(policy),
                    ::core::option::Option::None => ::core::result::Result::Err(::std::format!("{call} called before init")),
                })
            }

            struct Export;

            impl rp::Guest for Export {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    source_alias: ::std::string::String,
                ) -> ::core::result::Result<rp::PolicyInfo, ::std::string::String> {
                    ::sluice::log::set_host_log(host_log);
                    // A panic traps the instance; log its message first so the host can say why.
                    ::std::panic::set_hook(::std::boxed::Box::new(|info| host_log(::sluice::log::Level::Error, &info.to_string())));
                    let policy = ::sluice::__private::connector_init(config, |config| {
                        <__Policy as ::sluice::mirror::Policy>::init(config, &source_alias)
                    })
                    .map_err(|e| e.into_message())?;
                    let filters_records = <__Policy as ::sluice::mirror::Policy>::filters_records(&policy);
                    STATE.with(|current| *current.borrow_mut() = ::core::option::Option::Some(policy));
                    ::core::result::Result::Ok(rp::PolicyInfo { filters_records })
                }

                fn target_topics(
                    topics: ::std::vec::Vec<::std::string::String>,
                ) -> ::core::result::Result<::std::vec::Vec<::core::option::Option<::std::string::String>>, ::std::string::String> {
                    with_policy("target-topics", |policy| {
                        ::core::result::Result::Ok(topics.iter().map(|t| <__Policy as ::sluice::mirror::Policy>::target_topic(policy, t)).collect())
                    })
                }

                fn select_groups(
                    groups: ::std::vec::Vec<::std::string::String>,
                ) -> ::core::result::Result<::std::vec::Vec<bool>, ::std::string::String> {
                    with_policy("select-groups", |policy| {
                        ::core::result::Result::Ok(groups.iter().map(|g| <__Policy as ::sluice::mirror::Policy>::sync_group(policy, g)).collect())
                    })
                }

                fn filter(
                    topic: ::std::string::String,
                    batch: ::std::vec::Vec<types::InputRecord>,
                ) -> ::core::result::Result<::std::vec::Vec<rp::RecordAction>, ::std::string::String> {
                    with_policy("filter", |policy| {
                        // Moves, no copies: the byte vectors the host lowered become the SDK's records.
                        let records = batch.into_iter().map(|r| {
                            ::sluice::mirror::input_record(
                                r.key,
                                r.value,
                                r.headers.into_iter().map(|h| ::sluice::Header { key: h.key, value: h.value }).collect(),
                                r.timestamp_ms,
                                r.partition,
                                r.offset,
                            )
                        });
                        let actions = ::sluice::mirror::filter_batch(policy, &topic, records).map_err(|e| e.into_message())?;
                        ::core::result::Result::Ok(
                            actions
                                .into_iter()
                                .map(|action| match action {
                                    ::sluice::mirror::Action::Keep => rp::RecordAction::Keep,
                                    ::sluice::mirror::Action::Drop => rp::RecordAction::Drop,
                                    ::sluice::mirror::Action::Replace(r) => rp::RecordAction::Replace(rp::Rewritten {
                                        key: r.key,
                                        value: r.value,
                                        headers: r.headers.into_iter().map(|h| types::Header { key: h.key, value: h.value }).collect(),
                                    }),
                                })
                                .collect(),
                        )
                    })
                }
            }

            export!(Export);
        }
    }
}
