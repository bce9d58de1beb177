//! Quiver's plan-node codec: how a [`ParallelWriteExec`] travels to the executors that run it.
//!
//! datafusion-distributed serializes every stage with DataFusion's protobuf codec and hands the
//! nodes it does not know to the user codec registered on both sides (coordinator and executor
//! sessions, see [`crate::cluster::distributed`]). A writer is its [`WriteSpec`] as JSON; its
//! input travels as the node's child. [`super::exec::WriteCommitExec`] runs on the coordinator
//! only and is never encoded.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::exec::ParallelWriteExec;
use super::spec::WriteSpec;
use crate::error::to_datafusion;

/// Encodes and decodes Quiver's own plan nodes.
#[derive(Debug, Default)]
pub(crate) struct QuiverCodec;

impl PhysicalExtensionCodec for QuiverCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let spec: WriteSpec = serde_json::from_slice(buf).map_err(|e| {
            DataFusionError::Internal(format!(
                "a write node from the coordinator does not decode: {e}"
            ))
        })?;
        let [input] = inputs else {
            return Err(DataFusionError::Internal(
                "a write node arrived without its one input".into(),
            ));
        };
        let writer = ParallelWriteExec::try_new(Arc::clone(input), spec).map_err(to_datafusion)?;
        Ok(Arc::new(writer))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(writer) = node.downcast_ref::<ParallelWriteExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "Quiver's codec does not encode {}",
                node.name()
            )));
        };
        serde_json::to_writer(buf, writer.spec())
            .map_err(|e| DataFusionError::Internal(format!("encoding a write node: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    use super::*;
    use crate::sink::spec::{DEFAULT_TARGET_FILE_BYTES, DataFormat};

    #[test]
    fn writers_round_trip() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]));
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema));
        let spec = WriteSpec {
            write_id: "w".into(),
            attempt: "a".into(),
            destination: "/tmp/x/".into(),
            format: DataFormat::parquet("zstd(3)").unwrap(),
            partition_by: vec!["p".into()],
            not_null: vec![],
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
        };
        let node: Arc<dyn ExecutionPlan> =
            Arc::new(ParallelWriteExec::try_new(Arc::clone(&input), spec.clone()).unwrap());
        let mut buf = Vec::new();
        QuiverCodec
            .try_encode(node, &mut buf, &DefaultPhysicalProtoConverter {})
            .unwrap();
        let decoded = QuiverCodec
            .try_decode(
                &buf,
                &[input],
                &TaskContext::default(),
                &DefaultPhysicalProtoConverter {},
            )
            .unwrap();
        let writer = decoded.downcast_ref::<ParallelWriteExec>().unwrap();
        assert_eq!(writer.spec(), &spec);
        assert!(
            QuiverCodec
                .try_decode(
                    b"{",
                    &[],
                    &TaskContext::default(),
                    &DefaultPhysicalProtoConverter {}
                )
                .is_err()
        );
    }
}
