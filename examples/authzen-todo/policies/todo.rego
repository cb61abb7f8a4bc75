# Who may do what in the Todo application, by role from the users directory
# (data.users, keyed by the user's email, which is the AuthZEN subject ID):
#
# - everyone known may read users and the todo list;
# - admins and editors may create todos;
# - admins may update and delete any todo, editors only their own.
package authzen.todo

default decision := false

user := data.users[input.subject.id]

readers := {"can_read_user", "can_read_todos"}

changes := {"can_update_todo", "can_delete_todo"}

decision if {
	input.action.name in readers
	user
}

decision if {
	input.action.name == "can_create_todo"
	some role in user.roles
	role in {"admin", "editor"}
}

decision if {
	input.action.name in changes
	"admin" in user.roles
}

decision if {
	input.action.name in changes
	"editor" in user.roles
	input.resource.ownerID == input.subject.id
}
