"""Users, groups and information templates that the ``admin/*`` calls list.

The client maps names in its configuration to these numeric ids, and checks
template field ids against them; tests configure them through the constructor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_USERS: Mapping[str, int] = {"ingest": 1, "alice": 2, "bob": 3}
DEFAULT_GROUPS: Mapping[str, int] = {"staff": 4, "trainees": 5}


@dataclass(frozen=True)
class TemplateField:
    """One field of an information template."""

    id: int
    name: str
    type: str = "text"
    required: bool = False


@dataclass(frozen=True)
class Template:
    """An information template: the fields a record's ``template`` may fill."""

    id: int
    name: str
    fields: tuple[TemplateField, ...] = field(default_factory=tuple)

    def api_view(self) -> dict[str, Any]:
        """The ``data`` of ``GET admin/templates/{id}``."""
        return {
            "id": self.id,
            "name": self.name,
            "fields": [
                {"id": f.id, "name": f.name, "type": f.type, "required": f.required}
                for f in self.fields
            ],
        }


DEFAULT_TEMPLATES = (
    Template(
        1,
        "Interview",
        (TemplateField(1, "Case number", required=True), TemplateField(2, "Room")),
    ),
)


class Directory:
    """What an administrator's account sees under ``admin/``."""

    def __init__(
        self,
        users: Mapping[str, int] | None = None,
        groups: Mapping[str, int] | None = None,
        templates: Iterable[Template] | None = None,
    ) -> None:
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.groups = dict(DEFAULT_GROUPS if groups is None else groups)
        chosen = DEFAULT_TEMPLATES if templates is None else templates
        self.templates = {template.id: template for template in chosen}

    def user_list(self) -> list[dict[str, Any]]:
        """``admin/users`` entries."""
        return [{"id": uid, "name": name} for name, uid in self.users.items()]

    def group_list(self) -> list[dict[str, Any]]:
        """``admin/user_groups`` entries."""
        return [{"id": gid, "name": name} for name, gid in self.groups.items()]
