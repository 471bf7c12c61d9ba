//! Serde helpers that decode collections without trusting the length prefix.
//!
//! serde's default `Vec` visitor pre-allocates up to 1 MiB from a length the sender
//! claims. A manifest is at most [`crate::MAX_MESSAGE_BYTES`], so we instead grow the
//! collection as elements actually decode and refuse more than `N` elements. Every
//! element consumes at least one input byte, so memory stays proportional to the
//! input, which the size limit has already bounded.

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// Decode a `Vec<T>` holding at most `N` elements, with no up-front allocation.
pub fn vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct BoundedVisitor<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for BoundedVisitor<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a sequence of at most {N} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if seq.size_hint().is_some_and(|n| n > N) {
                return Err(A::Error::custom(format!("more than {N} elements")));
            }
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == N {
                    return Err(A::Error::custom(format!("more than {N} elements")));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(BoundedVisitor::<T, N>(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(deserialize_with = "super::vec::<_, _, 3>")]
        items: Vec<u32>,
    }

    #[test]
    fn accepts_up_to_the_bound_and_refuses_more() {
        let ok = Holder {
            items: vec![1, 2, 3],
        };
        let bytes = postcard::to_stdvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Holder>(&bytes).unwrap(), ok);

        let too_many = Holder {
            items: vec![1, 2, 3, 4],
        };
        let bytes = postcard::to_stdvec(&too_many).unwrap();
        let err = postcard::from_bytes::<Holder>(&bytes).unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err:?}");
    }

    #[test]
    fn a_huge_claimed_length_does_not_allocate_up_front() {
        // varint for u32::MAX elements followed by nothing: must fail on missing data.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<Holder>(&bytes).is_err());
    }
}
