"""Users: the Python API (`create_user`, `update_user`, `delete_user`, ...), what their changes
do (`hooks`), the seed's event path (`events`) and the CSV importer (`importer`).

`from bday.users import create_user` is the documented entry point; the functions live in
`bday.users.api`, the validation they share in `bday.users.fields`.
"""

from bday.users.api import (
    count_users,
    create_user,
    delete_user,
    erase_user,
    find_user,
    get_user,
    list_users,
    set_opt_out,
    update_user,
)
from bday.users.errors import UserInputError, UserNotFound, parse_user_id
from bday.users.fields import clean_user_fields

__all__ = [
    "UserInputError",
    "UserNotFound",
    "clean_user_fields",
    "count_users",
    "create_user",
    "delete_user",
    "erase_user",
    "find_user",
    "get_user",
    "list_users",
    "parse_user_id",
    "set_opt_out",
    "update_user",
]
