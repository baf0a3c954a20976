"""Hand-rolled Kafka request/response codecs for the APIs klag-pipeline uses.

aiokafka's own structs are not used on the collection path: several of them pair a request
version with the wrong response schema, its ``TaggedFields``/``VarInt64`` encoders are wrong for
non-trivial values, and a decode error inside aiokafka's reader task closes the connection. Here
aiokafka only moves bytes (see :class:`WireRequest`); every body is encoded and decoded by this
module, with bounds checks so a malformed or hostile response becomes a
:class:`ProtocolDecodeError` instead of a hang, a huge allocation or a dead connection.

Each codec covers a range of versions with per-field version conditions taken from the Kafka
message JSON definitions (``clients/src/main/resources/common/message``). Flexible versions
(KIP-482) use compact strings/arrays and tagged fields; we always send empty tag buffers and skip
whatever tags a broker sends.

One module per API (or small API family): :mod:`.versions` holds the table of supported
versions, :mod:`.primitives` the Writer/Reader, :mod:`.wire` the aiokafka seam. Every name is
re-exported here, so ``from klag_pipeline.kafka.protocol import X`` keeps working.
"""

from klag_pipeline.kafka.protocol.api_versions import (
    ApiVersionsResponse,
    decode_api_versions,
    encode_api_versions,
)
from klag_pipeline.kafka.protocol.consumer_group_describe import (
    ConsumerGroupDescribeResponse,
    ConsumerGroupDescription,
    ConsumerGroupMember,
    decode_consumer_group_describe,
    encode_consumer_group_describe,
)
from klag_pipeline.kafka.protocol.describe_configs import (
    TOPIC_RESOURCE,
    DescribeConfigsResponse,
    DescribedConfigs,
    decode_describe_configs,
    encode_describe_configs,
)
from klag_pipeline.kafka.protocol.describe_groups import (
    DescribedGroup,
    DescribedMember,
    DescribeGroupsResponse,
    decode_consumer_assignment,
    decode_describe_groups,
    encode_consumer_assignment,
    encode_describe_groups,
)
from klag_pipeline.kafka.protocol.find_coordinator import (
    GROUP_KEY_TYPE,
    Coordinator,
    FindCoordinatorResponse,
    decode_find_coordinator,
    encode_find_coordinator,
)
from klag_pipeline.kafka.protocol.list_groups import (
    ListedGroupEntry,
    ListGroupsResponse,
    decode_list_groups,
    encode_list_groups,
)
from klag_pipeline.kafka.protocol.list_offsets import (
    EARLIEST,
    LATEST,
    READ_COMMITTED,
    READ_UNCOMMITTED,
    ListedOffset,
    ListOffsetsResponse,
    decode_list_offsets,
    encode_list_offsets,
)
from klag_pipeline.kafka.protocol.metadata import (
    BrokerInfo,
    MetadataResponse,
    PartitionInfo,
    TopicInfo,
    decode_metadata,
    encode_metadata,
)
from klag_pipeline.kafka.protocol.offset_fetch import (
    CommittedPartition,
    GroupOffsets,
    OffsetFetchResponse,
    decode_offset_fetch,
    encode_offset_fetch,
)
from klag_pipeline.kafka.protocol.primitives import (
    ZERO_UUID,
    ProtocolDecodeError,
    Reader,
    Writer,
)
from klag_pipeline.kafka.protocol.versions import (
    API_VERSIONS,
    CONSUMER_GROUP_DESCRIBE,
    DESCRIBE_CONFIGS,
    DESCRIBE_GROUPS,
    FETCH_KEY,
    FIND_COORDINATOR,
    LIST_GROUPS,
    LIST_OFFSETS,
    METADATA,
    OFFSET_FETCH,
    OFFSET_FETCH_SINGLE,
    REPORTED_APIS,
    ApiSpec,
    choose_version,
)
from klag_pipeline.kafka.protocol.wire import (
    RawResponse,
    WireRequest,
)

__all__ = [
    "API_VERSIONS",
    "CONSUMER_GROUP_DESCRIBE",
    "DESCRIBE_CONFIGS",
    "DESCRIBE_GROUPS",
    "EARLIEST",
    "FETCH_KEY",
    "FIND_COORDINATOR",
    "GROUP_KEY_TYPE",
    "LATEST",
    "LIST_GROUPS",
    "LIST_OFFSETS",
    "METADATA",
    "OFFSET_FETCH",
    "OFFSET_FETCH_SINGLE",
    "READ_COMMITTED",
    "READ_UNCOMMITTED",
    "REPORTED_APIS",
    "TOPIC_RESOURCE",
    "ZERO_UUID",
    "ApiSpec",
    "ApiVersionsResponse",
    "BrokerInfo",
    "CommittedPartition",
    "ConsumerGroupDescribeResponse",
    "ConsumerGroupDescription",
    "ConsumerGroupMember",
    "Coordinator",
    "DescribeConfigsResponse",
    "DescribeGroupsResponse",
    "DescribedConfigs",
    "DescribedGroup",
    "DescribedMember",
    "FindCoordinatorResponse",
    "GroupOffsets",
    "ListGroupsResponse",
    "ListOffsetsResponse",
    "ListedGroupEntry",
    "ListedOffset",
    "MetadataResponse",
    "OffsetFetchResponse",
    "PartitionInfo",
    "ProtocolDecodeError",
    "RawResponse",
    "Reader",
    "TopicInfo",
    "WireRequest",
    "Writer",
    "choose_version",
    "decode_api_versions",
    "decode_consumer_assignment",
    "decode_consumer_group_describe",
    "decode_describe_configs",
    "decode_describe_groups",
    "decode_find_coordinator",
    "decode_list_groups",
    "decode_list_offsets",
    "decode_metadata",
    "decode_offset_fetch",
    "encode_api_versions",
    "encode_consumer_assignment",
    "encode_consumer_group_describe",
    "encode_describe_configs",
    "encode_describe_groups",
    "encode_find_coordinator",
    "encode_list_groups",
    "encode_list_offsets",
    "encode_metadata",
    "encode_offset_fetch",
]
