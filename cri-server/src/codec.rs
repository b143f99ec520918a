//! The protobuf codec of the CRI services: tonic_prost's, except that a message that does not decode is
//! answered with `InvalidArgument`.
//!
//! tonic_prost maps every prost decode error to `Internal` (gRPC's status table files parse errors there),
//! but for a runtime a request whose bytes are not the method's message is the client's fault, and the rule
//! is that bad CRI input gets a clear client error. The codec is picked at code generation (`codec_path` in
//! build.rs), so this one wrapper covers every method of both services, present and future. The generated
//! clients share it: for them a response that does not decode is reported as `InvalidArgument` too.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with [`CriDecoder`] as its decoder.
#[derive(Debug, Clone)]
pub struct CriCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CriCodec<T, U> {
    fn default() -> Self {
        CriCodec(PhantomData)
    }
}

impl<T, U> Codec for CriCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CriDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> CriDecoder<U> {
        CriDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Decodes as [`ProstDecoder`] does; its only error (the bytes are not a `U`) becomes `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct CriDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CriDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or_default();
            Status::invalid_argument(format!("the message is not a valid runtime.v1.{name}: {}", s.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
