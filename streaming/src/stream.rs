//! Transport-neutral halves of a Kubernetes stream: incoming data arrives on an `mpsc::Receiver<Bytes>`
//! (closed on the peer's half-close), outgoing data goes to an [`OutStream`]. A SPDY stream and a WebSocket
//! channel both look like this.

use std::io;

use async_trait::async_trait;

use crate::spdy::StreamWriter;

#[async_trait]
pub(crate) trait OutStream: Send {
    async fn write(&mut self, data: &[u8]) -> io::Result<()>;

    /// Ends this direction (SPDY FIN); a no-op where the protocol cannot say it.
    async fn close(&mut self) -> io::Result<()>;
}

#[async_trait]
impl OutStream for StreamWriter {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        StreamWriter::write(self, data).await
    }

    async fn close(&mut self) -> io::Result<()> {
        StreamWriter::close(self).await
    }
}
