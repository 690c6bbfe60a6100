//! The `#[task]` attribute of the Stockade guest SDK; use it as `stockade_guest::task`.
//!
//! Misuse is reported as a compile error on the offending part of the function, never as
//! a panic of the macro.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, PathArguments, ReturnType, Type};

/// Exports a function as a Stockade task.
///
/// The function takes one argument, decoded from the task's JSON input, and returns
/// `Result<Out, E>`: `Ok` is encoded as the JSON output, `Err` (shown with `Display`)
/// fails the task with that message. The task's name is the function's name.
///
/// ```ignore
/// #[stockade_guest::task]
/// fn add((a, b): (i64, i64)) -> Result<i64, String> {
///     a.checked_add(b).ok_or_else(|| "overflow".to_string())
/// }
/// ```
///
/// The function stays callable from Rust; on `wasm32` the attribute also emits the
/// export `stockade_task_<name>` (see `stockade_guest::abi`).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// The expansion, on `proc_macro2` tokens so that tests can run it.
fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[task]` takes no arguments; the task is named after the function",
        ));
    }
    let function: ItemFn = syn::parse2(item)?;
    let signature = Signature::check(&function)?;
    let name = &function.sig.ident;
    let task_name = name.unraw().to_string();
    let wrapper = format_ident!("__stockade_task_{}", task_name);
    let input = signature.input;
    let checks = signature.checks();

    Ok(quote! {
        #function

        // The bounds are checked on every target, so that host builds (tests, docs) report
        // them too.
        const _: () = {
            #[allow(dead_code)]
            fn check() {
                #checks
                let _: fn(#input) -> _ = #name;
            }
        };

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[unsafe(export_name = concat!(::stockade_guest::__task_export_prefix!(), #task_name))]
        pub extern "C" fn #wrapper() -> i32 {
            ::stockade_guest::__private::run_task::<#input, _, _>(#name)
        }
    })
}

/// The parts of a task's signature that the generated code names.
struct Signature<'a> {
    input: &'a Type,
    /// `Out` and `E` of `Result<Out, E>`, when written out (a `Result` alias with other
    /// parameters is left to the type checker).
    output: Option<(&'a Type, &'a Type)>,
}

impl<'a> Signature<'a> {
    /// Checks the shape of a task function, pointing at the offending part when it is wrong.
    fn check(function: &'a ItemFn) -> syn::Result<Self> {
        let sig = &function.sig;
        if let Some(token) = &sig.asyncness {
            return Err(syn::Error::new_spanned(
                token,
                "a task cannot be `async`: tasks run to completion synchronously",
            ));
        }
        if let Some(token) = &sig.constness {
            return Err(syn::Error::new_spanned(token, "a task cannot be `const`"));
        }
        if let Some(token) = &sig.unsafety {
            return Err(syn::Error::new_spanned(
                token,
                "a task cannot be `unsafe`: the host calls it with no preconditions",
            ));
        }
        if let Some(abi) = &sig.abi {
            return Err(syn::Error::new_spanned(abi, "a task is a plain Rust function; `#[task]` writes the export"));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            return Err(syn::Error::new_spanned(
                &sig.generics,
                "a task cannot be generic: its input and output types must be concrete",
            ));
        }
        if let Some(variadic) = &sig.variadic {
            return Err(syn::Error::new_spanned(variadic, "a task takes exactly one argument"));
        }
        let input = match (sig.inputs.len(), sig.inputs.first()) {
            (1, Some(FnArg::Typed(argument))) => &*argument.ty,
            (1, Some(FnArg::Receiver(receiver))) => {
                return Err(syn::Error::new_spanned(receiver, "a task is a free function, not a method"));
            }
            (0, _) => {
                let message = "a task takes exactly one argument (its decoded input); take `()` for none";
                return Err(syn::Error::new(sig.paren_token.span.join(), message));
            }
            _ => {
                let message = "a task takes exactly one argument; take a tuple or a struct for several values";
                return Err(syn::Error::new_spanned(&sig.inputs, message));
            }
        };
        let output = match &sig.output {
            ReturnType::Type(_, ty) => result_arguments(ty)?,
            ReturnType::Default => {
                let message = "a task returns `Result<Output, Error>`; add a return type";
                return Err(syn::Error::new(sig.ident.span(), message));
            }
        };
        Ok(Signature { input, output })
    }

    /// Assertions spanned on the types, so that a missing `Deserialize`, `Serialize` or
    /// `Display` is reported where the type is written.
    fn checks(&self) -> TokenStream2 {
        let input = self.input;
        let mut checks = quote_spanned!(input.span()=> ::stockade_guest::__private::assert_input::<#input>(););
        if let Some((ok, err)) = self.output {
            checks.extend(quote_spanned!(ok.span()=> ::stockade_guest::__private::assert_output::<#ok>();));
            checks.extend(quote_spanned!(err.span()=> ::stockade_guest::__private::assert_error::<#err>();));
        }
        checks
    }
}

/// `Out` and `E` of a return type written `Result<Out, E>`; an error unless the type's
/// last path segment is `Result`.
fn result_arguments(ty: &Type) -> syn::Result<Option<(&Type, &Type)>> {
    let not_result = || syn::Error::new_spanned(ty, "a task returns `Result<Output, Error>`");
    let Type::Path(path) = ty else {
        return Err(not_result());
    };
    let segment = path.path.segments.last().ok_or_else(not_result)?;
    if segment.ident != "Result" {
        return Err(not_result());
    }
    let PathArguments::AngleBracketed(arguments) = &segment.arguments else {
        return Err(not_result());
    };
    let types: Vec<&Type> = arguments
        .args
        .iter()
        .filter_map(|argument| match argument {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    Ok(match types.as_slice() {
        [ok, err] => Some((ok, err)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(item: TokenStream2) -> String {
        match expand(TokenStream2::new(), item) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_well_formed_task_gets_an_export() {
        let tokens = expand(
            TokenStream2::new(),
            quote!(
                fn r#add(x: (i64, i64)) -> Result<i64, String> {
                    Ok(x.0 + x.1)
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(tokens.contains("__stockade_task_add"), "{tokens}");
        assert!(tokens.contains("\"add\""), "{tokens}");
        assert!(tokens.contains("assert_output :: < i64 >"), "{tokens}");
    }

    #[test]
    fn misuse_is_an_error_that_says_what_to_do() {
        let cases = [
            (
                quote!(
                    async fn f(x: u32) -> Result<u32, String> {
                        Ok(x)
                    }
                ),
                "cannot be `async`",
            ),
            (
                quote!(
                    fn f<T>(x: T) -> Result<u32, String> {
                        Ok(1)
                    }
                ),
                "cannot be generic",
            ),
            (
                quote!(
                    fn f() -> Result<u32, String> {
                        Ok(1)
                    }
                ),
                "exactly one argument",
            ),
            (
                quote!(
                    fn f(a: u32, b: u32) -> Result<u32, String> {
                        Ok(a)
                    }
                ),
                "exactly one argument",
            ),
            (
                quote!(
                    fn f(x: u32) -> u32 {
                        x
                    }
                ),
                "returns `Result<Output, Error>`",
            ),
            (
                quote!(
                    fn f(x: u32) {}
                ),
                "add a return type",
            ),
            (
                quote!(
                    unsafe fn f(x: u32) -> Result<u32, String> {
                        Ok(x)
                    }
                ),
                "cannot be `unsafe`",
            ),
            (
                quote!(
                    struct S;
                ),
                "expected `fn`",
            ),
        ];
        for (item, expected) in cases {
            let message = error_of(item);
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
        let with_argument = expand(
            quote!(name = "x"),
            quote!(
                fn f(x: u32) -> Result<u32, String> {
                    Ok(x)
                }
            ),
        );
        assert!(with_argument.unwrap_err().to_string().contains("takes no arguments"));
    }
}
