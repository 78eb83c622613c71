"""Which DICOM attributes belong to one instance, not to its series: declared once.

Two templates are made from one slice's header, and each must leave out what is not the
series':

- the ``header`` attribute of a series matrix (:func:`ctdenoise.dicom_series.header_json`)
  stands for the whole source series, so it drops :data:`PER_INSTANCE_KEYWORDS`, whose values
  differ from slice to slice, and keeps the rest as the record of the source: its SOP class,
  pixel encoding, geometry and provenance are the same for every slice;
- the header template of a derived instance (:func:`ctdenoise.dicom_out.header_template`)
  drops those too, and also :data:`NOT_INHERITED_KEYWORDS`: what describes the *source's*
  pixels and provenance, which a new instance must not repeat.

Private tags, binary (bulk) values, pixel data and overlays are dropped by rules on the tag
and VR in those functions, not by keyword.
"""

from __future__ import annotations

PER_INSTANCE_KEYWORDS: tuple[str, ...] = (
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "SliceLocation",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "IconImageSequence",
)
"""Attributes whose values differ from slice to slice of one series.

One slice's value would misdescribe the others, so no template that stands for a series
carries them.
"""

NOT_INHERITED_KEYWORDS: tuple[str, ...] = (
    # what the instance is, and its place in space: set again by build_ct_dataset
    "SOPClassUID",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    # the source instance's creation, comments and provenance: the caller sets its own
    "InstanceCreationDate",
    "InstanceCreationTime",
    "InstanceCreatorUID",
    "ImageComments",
    "ImageType",
    "DerivationDescription",
    "DerivationCodeSequence",
    "SourceImageSequence",
    "ReferencedImageSequence",
    "ReferencedSeriesSequence",
    "ReferencedInstanceSequence",
    # the source's pixel values and their encoding: build_ct_dataset writes its own
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "DataSetTrailingPadding",
)
"""Attributes the same for every slice of the source, which a new instance must not inherit.

They stay in the series matrix's ``header``, the record of the source series, but describe the
source's pixels, encoding and provenance: a derived instance gets its own from
:func:`ctdenoise.dicom_out.build_ct_dataset` and its caller, or none at all (a derived slice
must not claim the source's padding value, VOI LUT or references).
"""
