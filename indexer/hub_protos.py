"""The protocol buffer messages of TF1 Hub format modules, declared once for reading and writing.

A TF1 Hub module carries two small messages of its own: ``tfhub_module.pb`` holds a
``ModuleDef`` (the storage format), and the MetaGraph's ``hub_module_attachments`` collection
holds ``ModuleAttachment`` messages, one of which (key ``image_module_info``) wraps an
``ImageModuleInfo`` with the input size the module was trained for.

tensorflow_hub 0.16.1 no longer ships these messages' generated ``*_pb2`` modules, so they are
declared here from tensorflow_hub's ``module_def.proto``, ``module_attachment.proto`` and
``image_module_info.proto`` (same package, names and field numbers) and built by the protobuf
runtime into a private descriptor pool: real messages, no hand-written wire format, and no
clash with a tensorflow_hub that might register them in the default pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

ATTACHMENT_COLLECTION = "hub_module_attachments"  # tensorflow_hub's ATTACHMENT_COLLECTION_SAVED
IMAGE_MODULE_INFO_KEY = "image_module_info"
MODULE_DEF_FILENAME = "tfhub_module.pb"

_PROTO_FILES = (
    """
    name: "tensorflow_hub/module_def.proto" package: "tensorflow_hub" syntax: "proto3"
    message_type {
      name: "ModuleDef"
      field { name: "format" number: 1 label: LABEL_OPTIONAL type: TYPE_ENUM
              type_name: ".tensorflow_hub.ModuleDef.Format" }
      field { name: "required_features" number: 2 label: LABEL_REPEATED type: TYPE_STRING }
      enum_type { name: "Format" value { name: "FORMAT_UNSPECIFIED" number: 0 }
                                 value { name: "FORMAT_V3" number: 3 } }
    }
    """,
    """
    name: "tensorflow_hub/module_attachment.proto" package: "tensorflow_hub" syntax: "proto3"
    message_type {
      name: "ModuleAttachment"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
      field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_BYTES }
    }
    """,
    """
    name: "tensorflow_hub/image_module_info.proto" package: "tensorflow_hub" syntax: "proto3"
    message_type {
      name: "ImageModuleInfo"
      field { name: "default_image_size" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
              type_name: ".tensorflow_hub.ImageModuleInfo.InputSize" }
      nested_type {
        name: "InputSize"
        field { name: "height" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
        field { name: "width" number: 2 label: LABEL_OPTIONAL type: TYPE_INT32 }
        reserved_range { start: 3 end: 4 }
      }
    }
    """,
)


def _message_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    for text in _PROTO_FILES:
        pool.Add(text_format.Parse(text, descriptor_pb2.FileDescriptorProto()))
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow_hub.{name}"))
            for name in ("ModuleDef", "ModuleAttachment", "ImageModuleInfo")}


_CLASSES = _message_classes()
ModuleDef: Any = _CLASSES["ModuleDef"]
ModuleAttachment: Any = _CLASSES["ModuleAttachment"]
ImageModuleInfo: Any = _CLASSES["ImageModuleInfo"]


def module_def_v3() -> bytes:
    """The content of ``tfhub_module.pb``: ModuleDef{format: FORMAT_V3}."""
    return ModuleDef(format=ModuleDef.FORMAT_V3).SerializeToString(deterministic=True)


def image_module_info_attachment(height: int, width: int) -> bytes:
    """A serialized ModuleAttachment declaring the input size the module expects."""
    info = ImageModuleInfo()
    info.default_image_size.height, info.default_image_size.width = height, width
    attachment = ModuleAttachment(key=IMAGE_MODULE_INFO_KEY, value=info.SerializeToString(deterministic=True))
    return attachment.SerializeToString(deterministic=True)


def image_size_from_attachments(blobs: Iterable[bytes]) -> tuple[int, int] | None:
    """(height, width) from the ``image_module_info`` attachment among blobs, if there is one.

    Raises google.protobuf.message.DecodeError when that attachment is not a valid message.
    """
    for blob in blobs:
        attachment = ModuleAttachment.FromString(blob)
        if attachment.key == IMAGE_MODULE_INFO_KEY:
            size = ImageModuleInfo.FromString(attachment.value).default_image_size
            return int(size.height), int(size.width)
    return None
