//! `sluice-macros`: the `#[sluice::transform]` attribute. Users reach it through the `sluice` crate.
//!
//! The attribute keeps the user's function as written (so native unit tests call it directly) and,
//! on wasm32 only, adds the component export glue: a type implementing the generated `Guest` trait
//! that forwards `init` and `process` to the SDK's batch loop, and the `wit-bindgen` export macro.
//! The signature is checked here, with errors pointing at the offending tokens.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Error, FnArg, ItemFn, Path, ReturnType, Token, parse_macro_input};

/// `#[sluice::transform]` or `#[sluice::transform(init = path::to::init_fn)]`.
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
                return Err(Error::new(name.span(), "unknown argument; the only one is `init = path::to::fn(&Config) -> Result<()>`"));
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

const SIGNATURE: &str = "a transform is `fn(record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()>`";

fn expand(args: Args, function: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &function.sig;
    if let Some(asyncness) = sig.asyncness {
        return Err(Error::new(asyncness.span(), format!("a transform cannot be async; {SIGNATURE}")));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(sig.generics.span(), format!("a transform cannot be generic; {SIGNATURE}")));
    }
    if sig.inputs.len() != 2 {
        return Err(Error::new(sig.inputs.span(), format!("expected two parameters; {SIGNATURE}")));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(Error::new(receiver.span(), format!("a transform is a free function, not a method; {SIGNATURE}")));
    }
    if let ReturnType::Default = sig.output {
        return Err(Error::new(sig.span(), format!("missing return type; {SIGNATURE}")));
    }
    let name = &sig.ident;
    let init = match &args.init {
        Some(path) => quote!(::core::option::Option::Some(#path as ::sluice::__private::InitFn)),
        None => quote!(::core::option::Option::None),
    };
    let guest = syn::Ident::new("__SluiceTransform", Span::call_site());
    Ok(quote! {
        #function

        // The type checks below run on every target, so a wrong signature fails `cargo test` too.
        const _: ::sluice::__private::TransformFn = #name;
        const _: ::core::option::Option<::sluice::__private::InitFn> = #init;

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct #guest;

            impl ::sluice::__private::Guest for #guest {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    outputs: ::std::vec::Vec<::std::string::String>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    ::sluice::__private::export_init(config, outputs, #init)
                }

                fn process(
                    batch: ::std::vec::Vec<::sluice::__private::WitInputRecord>,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<::sluice::__private::WitOutputRecord>,
                    ::sluice::__private::WitTransformError,
                > {
                    ::sluice::__private::export_process(batch, #name)
                }
            }

            ::sluice::__private::bindings::__export_transform!(#guest);
        };
    })
}
