"""Shared fixtures. Sections are owned by the part of pbt they serve; keep them separate."""

from __future__ import annotations
