//! `sluice-macros`: the `#[sluice::transform]` attribute. Users reach it through the `sluice` crate.
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
                    ::sluice::__private::export_init::<#state_ty>(config, outputs, #init)
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

            ::sluice::__private::bindings::__export_transform!(#guest);
        };
    })
}
